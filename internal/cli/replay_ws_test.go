package cli

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/replay"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// TestReplayWS: calls made on a ws listener with a real WebSocket client
// replay like the calls of an rpc listener: `udpgate replay --compare`
// publishes them to a candidate group, with their connection header, and
// compares its replies with the recorded ones, RPC status included; the
// one the candidate answers differently is reported. The listener's
// $connect and $disconnect events are replayed too, as they were
// published, and left out of the comparison. `udpgate replay --to` skips
// the calls and the events: they were no datagrams.
func TestReplayWS(t *testing.T) {
	defaults(t)
	s := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", s.ClientURL())
	rpcAddr, wsURL, wsPort := wsTestGateway(t, s, schemas.ProtocolRPC)
	subjects := func(prefix string) []string {
		return []string{
			schemas.InSubject(prefix, wsPort) + "." + builtin.PlacesService + ".*",
			schemas.InSubject(prefix, rpcAddr.Port()) + "." + builtin.PlacesService + ".*",
		}
	}
	// The places in order, so that the same call has the same reply.
	inOrder := builtin.Places{Perm: func(n int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = i
		}
		return p
	}}
	serveTestWorker(t, &workers.Server{NATS: natstest.Connect(t, s), Group: "places", Subjects: subjects("udpgate"), Handler: workers.HandlerFunc(inOrder.Handle)})

	c := dialTestWS(t, wsURL)
	calls := []struct {
		method string
		limit  int32
		text   bool
		want   rpcpb.Status
	}{
		{builtin.PlacesMethod, 1, false, rpcpb.Status_STATUS_OK},
		{builtin.PlacesMethod, 2, true, rpcpb.Status_STATUS_OK},
		{builtin.PlacesMethod, 3, false, rpcpb.Status_STATUS_OK}, // the candidate answers it differently
		{builtin.PlacesMethod, 9, true, rpcpb.Status_STATUS_INVALID_ARGUMENT},
		{"Elsewhere", 1, false, rpcpb.Status_STATUS_UNIMPLEMENTED},
	}
	for i, call := range calls {
		if r := callWS(t, c, uint64(i+1), builtin.PlacesService, call.method, &placespb.GetRandomRequest{Limit: call.limit}, call.text); r.Status != call.want {
			t.Fatalf("ws call %d: %v %s, want %v", i+1, r.Status, r.Error, call.want)
		}
	}
	// And one call to the rpc listener.
	params, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: 2})
	b, _ := proto.Marshal(&rpcpb.Call{Id: 100, Service: builtin.PlacesService, Method: builtin.PlacesMethod, Params: params})
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if _, err := udp.WriteToUDPAddrPort(b, rpcAddr); err != nil {
		t.Fatal(err)
	}
	udp.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := udp.ReadFromUDPAddrPort(make([]byte, 2048)); err != nil {
		t.Fatalf("rpc call: %v", err)
	}
	_, js := natstest.JetStream(t, s)
	waitMsgs(t, js, schemas.StreamIn, schemas.InSubject("udpgate", wsPort)+".*.*", uint64(len(calls))) // calls, not events
	waitMsgs(t, js, schemas.StreamIn, schemas.InSubject("udpgate", rpcAddr.Port())+".>", 1)
	waitMsgs(t, js, schemas.StreamReplies, "", uint64(len(calls)+1))
	// The connection ends: a $disconnect event after the $connect one.
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	waitMsgs(t, js, schemas.StreamIn, schemas.WSEventSubject("udpgate", wsPort, schemas.WSDisconnect), 1)

	// The candidate: the same worker but for the third ws call.
	var mu sync.Mutex // guards seen
	var seen []string
	serveTestWorker(t, &workers.Server{NATS: natstest.Connect(t, s), Group: "candidate", Subjects: subjects(replay.DefaultTarget("udpgate")),
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			src := r.Header.Get(schemas.HeaderSource)
			mu.Lock()
			seen = append(seen, src+" "+strconv.FormatUint(r.RPC.ID, 10)+" conn="+strconv.FormatBool(r.Header.Get(schemas.HeaderWSConnection) != ""))
			mu.Unlock()
			if strings.HasSuffix(src, "/ws") && r.RPC.ID == 3 {
				workers.SetRPCStatus(w, workers.RPCInvalidArgument, "changed")
				return nil
			}
			return inOrder.Handle(ctx, w, r)
		})})

	// The listener's events are replayed as they were published, to the
	// replay prefix's event subjects (one token after the port), where
	// the candidate accepts the $connect with an empty reply. No reply
	// to an event is recorded, so none is compared.
	evc := natstest.Connect(t, s)
	events := make(chan *nats.Msg, 10)
	if _, err := evc.Subscribe(schemas.InSubject(replay.DefaultTarget("udpgate"), wsPort)+".*", func(m *nats.Msg) {
		if strings.HasSuffix(m.Subject, "~24connect") {
			m.Respond(nil)
		}
		events <- m
	}); err != nil {
		t.Fatal(err)
	}
	if err := evc.Flush(); err != nil {
		t.Fatal(err)
	}

	var out, errb bytes.Buffer
	err = Run(context.Background(), []string{"replay", "--compare", "--speed", "max", "--wait", "3s"}, &out, &errb)
	if exitCode(err) != 1 {
		t.Fatalf("replay --compare: %v (exit %d), want exit 1 for the difference\n%s%s", err, exitCode(err), out.String(), errb.String())
	}
	m := regexp.MustCompile(`replay: (\d+) requests from`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no summary: %s", out.String())
	}
	selected, _ := strconv.Atoi(m[1])
	if selected != len(calls)+3 {
		t.Errorf("%d requests replayed, want %d ws calls, the rpc call and 2 events", selected, len(calls))
	}
	wsSource := schemas.Source("n1", schemas.Listener(wsPort, schemas.ProtocolWS))
	for _, want := range []struct{ route, typ string }{{schemas.WSConnect, schemas.TypeWSConnect}, {schemas.WSDisconnect, schemas.TypeWSDisconnect}} {
		var ev *nats.Msg
		select {
		case ev = <-events:
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s event replayed", want.route)
		}
		if h := ev.Header; ev.Subject != schemas.WSEventSubject(replay.DefaultTarget("udpgate"), wsPort, want.route) || h.Get(schemas.HeaderType) != want.typ ||
			h.Get(schemas.HeaderSource) != wsSource || h.Get(schemas.HeaderWSConnection) == "" || h.Get(replay.HeaderReplayOf) == "" {
			t.Errorf("replayed %s event: %s, headers %v", want.route, ev.Subject, h)
		}
	}
	ws := "udpgate.in." + strconv.Itoa(int(wsPort)) + ".InterestingPlaces.GetRandom (ws, seq "
	for _, want := range []string{
		"sent 8, answered 7, ",
		"compare with UDPGATE_REPLIES: 5 identical, 1 different, 0 missing, 0 unanswered; 2 not compared (ws connection events, whose replies are not recorded)\n",
		"difference 1 of 1: " + ws,
		"  rpc status: recorded 0, candidate 3\n",
		`  rpc error: recorded "", candidate "changed"`,
		"  body differs at byte 0",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("replay --compare output lacks %q:\n%s", want, out.String())
		}
	}
	mu.Lock()
	slices.Sort(seen) // the group handles them concurrently
	got := strings.Join(seen, ", ")
	mu.Unlock()
	rpcSource := schemas.Source("n1", schemas.Listener(rpcAddr.Port(), schemas.ProtocolRPC))
	want := []string{}
	for i := range calls {
		want = append(want, wsSource+" "+strconv.Itoa(i+1)+" conn=true")
	}
	want = append(want, rpcSource+" 100 conn=false")
	slices.Sort(want)
	if got != strings.Join(want, ", ") {
		t.Errorf("the candidate received %s; want %s", got, strings.Join(want, ", "))
	}

	// Onto the wire, only the rpc listener's call is a datagram.
	out.Reset()
	if err := Run(context.Background(), []string{"replay", "--to", "udp://" + rpcAddr.String(), "--speed", "max", "--wait", "5s"}, &out, &errb); err != nil {
		t.Fatalf("replay --to: %v\n%s%s", err, out.String(), errb.String())
	}
	// Requests captured since (the replies to the replay) are not part of it.
	if want := "sent 1, answered 1, skipped 7, errors 0"; !strings.Contains(out.String(), want) {
		t.Errorf("replay --to output lacks %q:\n%s", want, out.String())
	}
}
