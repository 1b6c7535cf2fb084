package replay_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/replay"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
)

// startGateway runs a gateway node with one 127.0.0.1 listener per protocol
// given, recording replies, and returns its listeners' addresses.
func startGateway(t testing.TB, s *server.Server, protocols ...string) []netip.AddrPort {
	t.Helper()
	g := &gateway.Gateway{
		NATS:     natstest.Connect(t, s),
		Node:     "node-1",
		Replies:  ingress.StreamConfig{Name: schemas.StreamReplies},
		Deadline: 2 * time.Second,
	}
	var addrs []netip.AddrPort
	for _, p := range protocols {
		c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
		if err != nil {
			t.Fatal(err)
		}
		g.Listeners = append(g.Listeners, gateway.Listener{Conn: c, Protocol: p})
		addrs = append(addrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway Serve: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway not ready after 10s")
	}
	return addrs
}

// startWorker runs a direct worker group and returns it once it receives
// requests.
func startWorker(t testing.TB, s *server.Server, group string, subjects []string, h workers.Handler) *workers.Server {
	t.Helper()
	return serveWorker(t, &workers.Server{NATS: natstest.Connect(t, s), Group: group, Subjects: subjects, Handler: h})
}

// startDurable runs a durable worker group on stream and returns it once
// it is bound.
func startDurable(t testing.TB, s *server.Server, stream, group string, subjects []string, h workers.Handler) *workers.Server {
	t.Helper()
	_, js := natstest.JetStream(t, s)
	return serveWorker(t, &workers.Server{JetStream: js, Delivery: workers.Durable, Stream: stream, Group: group, Subjects: subjects, Handler: h})
}

func serveWorker(t testing.TB, w *workers.Server) *workers.Server {
	t.Helper()
	group := w.Group
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", group, err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker %s stopped before it was ready: %v", group, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("worker %s not ready after 10s", group)
	}
	return w
}

// client is a UDP client socket of a test.
func client(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitStored waits until the capture holds n requests.
func waitStored(t testing.TB, js jetstream.JetStream, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := js.Stream(context.Background(), schemas.StreamIn)
		if err == nil && st.CachedInfo().State.Msgs >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("capture does not hold %d requests after 10s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// receiver is a socket that records what arrives, and when.
type receiver struct {
	conn *net.UDPConn
	mu   sync.Mutex // guards got and at
	got  [][]byte
	at   []time.Time
}

func newReceiver(t testing.TB) *receiver {
	t.Helper()
	r := &receiver{conn: client(t)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, err := r.conn.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			r.mu.Lock()
			r.got = append(r.got, bytes.Clone(buf[:n]))
			r.at = append(r.at, now)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		r.conn.Close()
		<-done
	})
	return r
}

func (r *receiver) addr() netip.AddrPort { return r.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// wait returns what arrived once n datagrams have, or after 5s; then it
// forgets them.
func (r *receiver) wait(t testing.TB, n int) ([][]byte, []time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		have := len(r.got)
		r.mu.Unlock()
		if have >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	got, at := r.got, r.at
	r.got, r.at = nil, nil
	if len(got) != n {
		t.Fatalf("received %d datagrams, want %d", len(got), n)
	}
	return got, at
}

// wire replays r onto the wire to rcv with a fresh socket.
func wire(t testing.TB, r *replay.Replayer, rcv *receiver) replay.Result {
	t.Helper()
	res, err := r.Wire(context.Background(), client(t), rcv.addr())
	if err != nil {
		t.Fatalf("Wire: %v", err)
	}
	return res
}

func coapRequest(mid uint16, path string, payload string) []byte {
	b := []byte{0x42, 0x01, byte(mid >> 8), byte(mid), 0xab, 0xcd} // CON GET, token abcd
	if payload != "" {
		b[1] = 0x02 // POST
	}
	b = append(b, 0xb0|byte(len(path))) // Uri-Path
	b = append(b, path...)
	if payload != "" {
		b = append(b, 0x10, 0xff) // Content-Format 0, payload marker
		b = append(b, payload...)
	}
	return b
}

func TestWireReplaySameBytes(t *testing.T) {
	s := natstest.RunServer(t)
	addrs := startGateway(t, s, schemas.ProtocolRaw, schemas.ProtocolCoAP, schemas.ProtocolRPC)
	_, js := natstest.JetStream(t, s)
	call, err := proto.Marshal(&rpcpb.Call{Id: 8123984, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 2}})
	if err != nil {
		t.Fatal(err)
	}
	sent := []struct {
		to   netip.AddrPort
		data []byte
	}{
		{addrs[0], []byte("hello")},
		{addrs[0], []byte{0, 1, 2, 0xff, '.', '>', 0}},
		{addrs[1], coapRequest(0x1234, "echo", "hi there")},
		{addrs[1], coapRequest(0x1235, "time", "")},
		{addrs[2], call},
		{addrs[0], bytes.Repeat([]byte{0xa5}, 4000)},
	}
	c := client(t)
	for i, d := range sent {
		if _, err := c.WriteToUDPAddrPort(d.data, d.to); err != nil {
			t.Fatal(err)
		}
		waitStored(t, js, uint64(i+1)) // one by one, so the capture keeps this order
	}

	rcv := newReceiver(t)
	res := wire(t, &replay.Replayer{JetStream: js, Speed: replay.Max}, rcv)
	got, _ := rcv.wait(t, len(sent))
	for i, d := range sent {
		if !bytes.Equal(got[i], d.data) {
			t.Errorf("datagram %d: got %x, want %x", i, got[i], d.data)
		}
	}
	if res.Selected != len(sent) || res.Sent != len(sent) || res.Errors != 0 || res.Skipped != 0 {
		t.Errorf("result %+v, want %d selected and sent", res, len(sent))
	}
}

func TestPacing(t *testing.T) {
	s := natstest.RunServer(t)
	addrs := startGateway(t, s, schemas.ProtocolRaw)
	_, js := natstest.JetStream(t, s)

	// 50 datagrams, 49 gaps of 20, 40 and 60 ms.
	const n = 50
	gaps := []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 60 * time.Millisecond}
	c := client(t)
	next := time.Now()
	for i := range n {
		if i > 0 {
			next = next.Add(gaps[i%len(gaps)])
			<-time.After(time.Until(next))
		}
		if _, err := c.WriteToUDPAddrPort([]byte(strconv.Itoa(i)), addrs[0]); err != nil {
			t.Fatal(err)
		}
	}
	waitStored(t, js, n)
	recorded := recordedTimes(t, js, n)

	want := recorded[n-1].Sub(recorded[0])
	// The pacer's schedule is tested exactly, on a fake clock, by
	// TestPacerSchedule. Here, end to end, what a loaded machine cannot
	// make flaky: a timer never fires early, so a paced replay never takes
	// less than the recorded span divided by its speed; and the datagrams
	// arrive in their recorded order.
	rcv := newReceiver(t)
	orig := wire(t, &replay.Replayer{JetStream: js, Speed: replay.Original}, rcv)
	got, _ := rcv.wait(t, n)
	for i, b := range got {
		if string(b) != strconv.Itoa(i) {
			t.Fatalf("datagram %d is %q, want %q: out of the recorded order", i, b, strconv.Itoa(i))
		}
	}
	if orig.Duration < want {
		t.Errorf("speed 1 took %v, less than the recorded %v", orig.Duration, want)
	}
	double := wire(t, &replay.Replayer{JetStream: js, Speed: 2}, rcv)
	rcv.wait(t, n)
	if double.Duration < want/2 {
		t.Errorf("speed 2 took %v, less than half the recorded %v", double.Duration, want)
	}
	fast := wire(t, &replay.Replayer{JetStream: js, Speed: replay.Max}, rcv)
	rcv.wait(t, n)
	if fast.Duration >= want/2 {
		t.Errorf("speed max took %v, the recorded span is %v: it waited", fast.Duration, want)
	}
}

// recordedTimes returns when the capture stored its first n requests.
func recordedTimes(t testing.TB, js jetstream.JetStream, n int) []time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, schemas.StreamIn, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := cons.Fetch(n, jetstream.FetchContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var at []time.Time
	for m := range msgs.Messages() {
		if m.Headers().Get(schemas.HeaderTime) != "" {
			t.Fatalf("a live request has %s", schemas.HeaderTime)
		}
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, md.Timestamp)
	}
	if len(at) != n {
		t.Fatalf("read %d requests, want %d", len(at), n)
	}
	return at
}

func TestWindowAndFilters(t *testing.T) {
	s := natstest.RunServer(t)
	addrs := startGateway(t, s, schemas.ProtocolRaw, schemas.ProtocolRaw)
	a, b := addrs[0], addrs[1]
	_, js := natstest.JetStream(t, s)
	c := client(t)
	stored := uint64(0)
	batch := func(name string) {
		for i := range 3 {
			for _, to := range []netip.AddrPort{a, b} {
				tag := "b"
				if to == a {
					tag = "a"
				}
				if _, err := c.WriteToUDPAddrPort([]byte(tag+name+"-"+strconv.Itoa(i)), to); err != nil {
					t.Fatal(err)
				}
				stored++
				waitStored(t, js, stored)
			}
		}
	}
	batch("1")
	t1 := time.Now()
	batch("2")
	t2 := time.Now()

	tests := []struct {
		name string
		r    replay.Replayer
		want string // the payloads' first two bytes, in order
	}{
		{"all", replay.Replayer{}, "a1 b1 a1 b1 a1 b1 a2 b2 a2 b2 a2 b2"},
		{"since", replay.Replayer{Since: t1}, "a2 b2 a2 b2 a2 b2"},
		{"until", replay.Replayer{Until: t1}, "a1 b1 a1 b1 a1 b1"},
		{"since and port", replay.Replayer{Since: t1, Ports: []uint16{a.Port()}}, "a2 a2 a2"},
		{"two ports", replay.Replayer{Ports: []uint16{a.Port(), b.Port()}, Until: t1}, "a1 b1 a1 b1 a1 b1"},
		{"subject", replay.Replayer{Subjects: []string{schemas.InSubject("udpgate", b.Port())}}, "b1 b1 b1 b2 b2 b2"},
		{"subject wildcard and port", replay.Replayer{Subjects: []string{"udpgate.in.*"}, Ports: []uint16{b.Port()}, Since: t1}, "b2 b2 b2"},
		{"empty window", replay.Replayer{Since: t2}, ""},
	}
	rcv := newReceiver(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			r.JetStream, r.Speed = js, replay.Max
			res := wire(t, &r, rcv)
			want := strings.Fields(tt.want)
			got, _ := rcv.wait(t, len(want))
			var tags []string
			for _, g := range got {
				tags = append(tags, string(g[:2]))
			}
			if !slices.Equal(tags, want) {
				t.Errorf("replayed %q, want %q", tags, want)
			}
			if res.Selected != len(want) || res.Sent != len(want) {
				t.Errorf("selected %d, sent %d, want %d", res.Selected, res.Sent, len(want))
			}
		})
	}
}

// upper answers a raw request with its body upper-cased, and a CoAP GET
// with "Hello".
func upper(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
	if r.Protocol == schemas.ProtocolCoAP {
		resp := workers.NewCoAPResponse(w)
		resp.SetContentFormat(0)
		_, err := resp.Write([]byte("Hello"))
		return err
	}
	_, err := w.Write(bytes.ToUpper(r.Body))
	return err
}

func TestPublishAndCompare(t *testing.T) {
	s := natstest.RunServer(t)
	addrs := startGateway(t, s, schemas.ProtocolRaw, schemas.ProtocolCoAP)
	raw, cp := addrs[0], addrs[1]
	_, js := natstest.JetStream(t, s)
	subjects := func(prefix string) []string {
		return []string{schemas.InSubject(prefix, raw.Port()), schemas.InSubject(prefix, cp.Port()) + ".>"}
	}
	prod := startWorker(t, s, "prod", subjects("udpgate"), workers.HandlerFunc(upper))

	// Capture: 10 raw requests and a CoAP GET, each answered.
	c := client(t)
	buf := make([]byte, 2048)
	exchange := func(to netip.AddrPort, b []byte) {
		t.Helper()
		if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("no answer from %s: %v", to, err)
		}
	}
	for i := range 10 {
		exchange(raw, []byte("msg-"+strconv.Itoa(i)))
	}
	exchange(cp, coapRequest(0x4000, "hello", ""))
	waitStored(t, js, 11)
	handled := prod.Stats().Handled

	ctx := context.Background()
	t.Run("same worker, direct", func(t *testing.T) {
		prefix := replay.DefaultTarget("udpgate")
		if _, err := replay.EnsureStream(ctx, js, replay.StreamName(prefix), prefix); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex // guards replayOf and bad
		replayOf := map[string]bool{}
		var bad []string
		startWorker(t, s, "candidate", subjects(prefix), workers.HandlerFunc(
			func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
				mu.Lock()
				replayOf[r.Header.Get(replay.HeaderReplayOf)] = true
				// As the gateway publishes a request: the reply subject
				// names the request, and ce-time the captured time.
				if id, _ := schemas.ReplyID(r.Reply); id != r.ID || r.Header.Get(schemas.HeaderReply) != r.Reply ||
					!strings.HasPrefix(r.Reply, prefix+".reply.replay-") || r.Received.IsZero() || r.Delivery != 0 {
					bad = append(bad, fmt.Sprintf("ce-id %s, reply %s, udpgate-reply %s, received %v",
						r.ID, r.Reply, r.Header.Get(schemas.HeaderReply), r.Received))
				}
				mu.Unlock()
				return upper(ctx, w, r)
			}))
		res, cmp := replayCompare(t, js, prefix, 10*time.Second) // every request is answered: no waiting
		if res.Sent != 11 || res.Answered != 11 || res.Uncaptured != 0 || res.NoResponders != 0 {
			t.Errorf("result %+v, want 11 sent and answered", res)
		}
		// The replay stream holds the copies, under the request subjects.
		st, err := js.Stream(ctx, replay.StreamName(prefix))
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+".in.>")); err != nil || info.State.Msgs != 11 {
			t.Errorf("replay stream: %v, %v; want 11 requests on %s.in.>", info, err, prefix)
		}
		if cmp.Identical != 11 || !cmp.OK() {
			t.Errorf("comparison %+v, want 11 identical", cmp)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, r := range res.Requests {
			if !replayOf[r.ID] {
				t.Errorf("the candidate saw no request with %s %s", replay.HeaderReplayOf, r.ID)
			}
		}
		for _, b := range bad {
			t.Errorf("replayed request: %s", b)
		}
	})

	t.Run("changed worker, durable", func(t *testing.T) {
		prefix := "udpgate.shadow"
		if _, err := replay.EnsureStream(ctx, js, replay.StreamName(prefix), prefix); err != nil {
			t.Fatal(err)
		}
		startDurable(t, s, "UDPGATE_SHADOW", "candidate", subjects(prefix), workers.HandlerFunc(
			func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
				switch string(r.Body) {
				case "msg-3":
					_, err := w.Write([]byte("MSG-three"))
					return err
				case "msg-5":
					return nil // no answer
				}
				if r.Protocol == schemas.ProtocolCoAP {
					workers.NewCoAPResponse(w).SetCode(workers.NotFound)
					return nil
				}
				return upper(ctx, w, r)
			}))
		res, cmp := replayCompare(t, js, prefix, 1500*time.Millisecond) // msg-5 never is
		if cmp.Identical != 8 || cmp.Different != 2 || cmp.Missing != 1 || cmp.OK() {
			t.Fatalf("comparison %+v, want 8 identical, 2 different, 1 missing", cmp)
		}
		if res.NoResponders != 11 {
			t.Errorf("%d requests without a direct candidate, want all 11", res.NoResponders)
		}
		var text []string
		for _, d := range cmp.Diffs {
			text = append(text, d.String())
		}
		all := strings.Join(text, "\n")
		for _, want := range []string{
			"body differs at byte 4 (recorded 5 bytes, candidate 9 bytes)",
			`recorded  "MSG-3"`,
			"recorded  4d53472d33\n    candidate 4d53472d7468726565",
			"missing: the candidate did not answer; recorded status ok, 5 bytes \"MSG-5\"",
			"code: recorded 2.05, candidate 4.04",
			"content-format: recorded 0, candidate (none)",
			`payload differs at byte 0 (recorded 5 bytes, candidate 0 bytes)`,
		} {
			if !strings.Contains(all, want) {
				t.Errorf("differences lack %q:\n%s", want, all)
			}
		}
	})

	if got := prod.Stats().Handled; got != handled {
		t.Errorf("the production group handled %d more requests during the replays", got-handled)
	}
}

// replayCompare replays the whole capture to prefix, waits up to wait for
// replies, and compares them with the recorded ones.
func replayCompare(t *testing.T, js jetstream.JetStream, prefix string, wait time.Duration) (replay.Result, replay.Comparison) {
	t.Helper()
	r := &replay.Replayer{JetStream: js, Speed: replay.Max, Wait: wait}
	res, err := r.Publish(context.Background(), replay.Target{Prefix: prefix, Keep: true})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	cmp, err := replay.Compare(context.Background(), js, schemas.StreamReplies, res, 10)
	if err != nil {
		t.Fatalf("Compare: %v", err)
	}
	return res, cmp
}

func TestPublishRefusesProductionSubjects(t *testing.T) {
	s := natstest.RunServer(t)
	startGateway(t, s, schemas.ProtocolRaw)
	_, js := natstest.JetStream(t, s)
	r := &replay.Replayer{JetStream: js}
	for _, prefix := range []string{"udpgate", "udpgate.in", "udpgate.in.x", "udpgate.reply", "udpgate.capture", "", "bad prefix", "a..b"} {
		if _, err := r.Publish(context.Background(), replay.Target{Prefix: prefix}); err == nil {
			t.Errorf("Publish to prefix %q: no error", prefix)
		}
	}
}

func TestWireReplayCountsAnswers(t *testing.T) {
	s := natstest.RunServer(t)
	addrs := startGateway(t, s, schemas.ProtocolRaw)
	_, js := natstest.JetStream(t, s)
	startWorker(t, s, "prod", []string{schemas.InSubject("udpgate", addrs[0].Port())}, workers.HandlerFunc(upper))
	c := client(t)
	for i := range 3 {
		if _, err := c.WriteToUDPAddrPort([]byte("x"+strconv.Itoa(i)), addrs[0]); err != nil {
			t.Fatal(err)
		}
	}
	waitStored(t, js, 3)
	r := &replay.Replayer{JetStream: js, Speed: replay.Max, Wait: 5 * time.Second}
	res, err := r.Wire(context.Background(), client(t), addrs[0]) // the gateway answers the replay
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 3 || res.Answered != 3 {
		t.Errorf("sent %d, answered %d, want 3", res.Sent, res.Answered)
	}
}

// TestReplayStreamShape: EnsureStream creates a replay stream with the
// capture's shape and uses it as it is the next time; a stream made for
// wire contract 1 (subjects PREFIX.in.>, no transform) is refused, by
// EnsureStream and by Publish, with what to do about it.
func TestReplayStreamShape(t *testing.T) {
	s := natstest.RunServer(t)
	startGateway(t, s, schemas.ProtocolRaw)
	_, js := natstest.JetStream(t, s)
	ctx := context.Background()

	did, err := replay.EnsureStream(ctx, js, "NEW", "new")
	if err != nil || !strings.HasPrefix(did, "created stream NEW") {
		t.Fatalf("EnsureStream: %q, %v", did, err)
	}
	st, err := js.Stream(ctx, "NEW")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if tr := cfg.SubjectTransform; !slices.Equal(cfg.Subjects, []string{"new.capture.>"}) || tr == nil ||
		tr.Source != "new.capture.>" || tr.Destination != "new.in.>" {
		t.Errorf("subjects %q, transform %+v; want new.capture.> stored as new.in.>", cfg.Subjects, cfg.SubjectTransform)
	}
	if did, err := replay.EnsureStream(ctx, js, "NEW", "new"); err != nil || !strings.HasPrefix(did, "using stream NEW") {
		t.Errorf("EnsureStream again: %q, %v", did, err)
	}

	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OLD", Subjects: []string{"old.in.>"}}); err != nil {
		t.Fatal(err)
	}
	_, err = replay.EnsureStream(ctx, js, "OLD", "old")
	for _, want := range []string{"do not cover old.capture.>", "no subject transform", "overlaps old.in.>", "nats stream rm OLD"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("EnsureStream of a contract 1 stream: %v; want it to say %q", err, want)
		}
	}
	r := &replay.Replayer{JetStream: js}
	if _, err := r.Publish(ctx, replay.Target{Prefix: "old", Stream: "OLD"}); err == nil || !strings.Contains(err.Error(), "nats stream rm OLD") {
		t.Errorf("Publish to a contract 1 stream: %v", err)
	}
}
