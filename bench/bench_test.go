package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	coapcoder "github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// listen binds a UDP socket on 127.0.0.1.
func listen(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve runs an echo server until the test ends and returns its udp:// URL.
func serve(t testing.TB, drop func(int) bool) string {
	t.Helper()
	c := listen(t)
	e := &Echo{Conn: c, Drop: drop}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("echo: %v", err)
		}
	})
	return "udp://" + c.LocalAddr().String()
}

func runBench(t testing.TB, cfg Config) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkLatency(t, res)
	return res
}

// checkLatency checks that the percentiles are ordered.
func checkLatency(t testing.TB, res Result) {
	t.Helper()
	l := res.Latency
	if res.Answered == 0 {
		return
	}
	if !(0 < l.Min && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Errorf("latency percentiles out of order: %+v", l)
	}
}

func TestClosedLoopCount(t *testing.T) {
	target := serve(t, nil)
	for _, tt := range []struct {
		name                string
		concurrency, socket int
	}{
		{"one in flight", 1, 0},
		{"16 in flight on 16 sockets", 16, 0},
		{"16 in flight on 2 sockets", 16, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := runBench(t, Config{Target: target, Concurrency: tt.concurrency, Sockets: tt.socket, Count: 2000, Payload: []byte("hello")})
			if res.Sent != 2000 || res.Answered != 2000 || res.Lost != 0 || res.Errors != 0 {
				t.Errorf("sent %d answered %d lost %d errors %d, want 2000 2000 0 0", res.Sent, res.Answered, res.Lost, res.Errors)
			}
			if res.Rate <= 0 || res.Mode != "closed" {
				t.Errorf("rate %v mode %q", res.Rate, res.Mode)
			}
		})
	}
}

// TestWarmup: warm-up requests go out on the same sockets before the
// measured ones and are counted nowhere, not even when they are lost.
func TestWarmup(t *testing.T) {
	var seen atomic.Int64
	target := serve(t, func(n int) bool {
		seen.Add(1)
		return n%10 == 0 && n < 40 // lose some warm-up requests only
	})
	res := runBench(t, Config{Target: target, Concurrency: 4, Sockets: 2, Count: 30, Warmup: 40, Timeout: 200 * time.Millisecond})
	if res.Sent != 30 || res.Answered != 30 || res.Lost != 0 || res.SocketsOpened != 2 {
		t.Errorf("sent %d, answered %d, lost %d on %d sockets; want 30 sent and answered, none lost, 2 sockets",
			res.Sent, res.Answered, res.Lost, res.SocketsOpened)
	}
	if n := seen.Load(); n != 70 {
		t.Errorf("the server saw %d requests, want 40 warm-up + 30", n)
	}
}

func TestClosedLoopDurationEnds(t *testing.T) {
	res := runBench(t, Config{Target: serve(t, nil), Concurrency: 4, Duration: 200 * time.Millisecond})
	if res.Answered == 0 || res.Sent != res.Answered+res.Lost+res.Failed {
		t.Errorf("sent %d answered %d lost %d", res.Sent, res.Answered, res.Lost)
	}
}

func TestOpenLoopCount(t *testing.T) {
	res := runBench(t, Config{Target: serve(t, nil), Rate: 5000, Count: 500, Sockets: 4})
	if res.Sent != 500 || res.Answered+res.Lost != 500 || res.Mode != "open" {
		t.Errorf("sent %d answered %d lost %d mode %q, want 500 sent", res.Sent, res.Answered, res.Lost, res.Mode)
	}
}

func TestOpenLoopDurationEnds(t *testing.T) {
	res := runBench(t, Config{Target: serve(t, nil), Rate: 1000, Duration: 200 * time.Millisecond})
	// 200 requests are due before the end: each is sent (late if need
	// be) or counted as behind, and each one sent is answered or lost.
	if res.Sent+res.Behind+res.Errors != 200 || res.Sent != res.Answered+res.Lost {
		t.Errorf("sent %d behind %d errors %d answered %d lost %d", res.Sent, res.Behind, res.Errors, res.Answered, res.Lost)
	}
}

func TestLossCounted(t *testing.T) {
	target := serve(t, func(n int) bool { return n%2 == 1 })
	res := runBench(t, Config{Target: target, Count: 20, Timeout: 50 * time.Millisecond})
	if res.Sent != 20 || res.Answered != 10 || res.Lost != 10 {
		t.Errorf("sent %d answered %d lost %d, want 20 10 10", res.Sent, res.Answered, res.Lost)
	}
}

func TestNothingListens(t *testing.T) {
	c := listen(t)
	target := "udp://" + c.LocalAddr().String()
	c.Close()
	res := runBench(t, Config{Target: target, Count: 5, Timeout: 50 * time.Millisecond})
	if res.Answered != 0 || res.Lost != res.Sent || res.Errors == 0 {
		t.Errorf("sent %d answered %d lost %d errors %d", res.Sent, res.Answered, res.Lost, res.Errors)
	}
}

// A server that does not echo (like the built-in time worker) answers a
// socket's only request.
func TestRawReplyWithoutID(t *testing.T) {
	c := listen(t)
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort([]byte("2026-11-23T00:00:00Z"), from)
		}
	}()
	t.Cleanup(func() { c.Close() })
	res := runBench(t, Config{Target: "udp://" + c.LocalAddr().String(), Concurrency: 4, Count: 200})
	if res.Answered != 200 {
		t.Errorf("answered %d of %d", res.Answered, res.Sent)
	}
}

func TestNoReply(t *testing.T) {
	c := listen(t)
	var (
		mu  sync.Mutex
		got int
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			mu.Lock()
			got++
			mu.Unlock()
		}
	}()
	res := runBench(t, Config{Target: "udp://" + c.LocalAddr().String(), NoReply: true, Rate: 2000, Count: 100, Short: 10})
	c.Close()
	<-done
	if res.Sent != 100 || res.Lost != 0 || res.Answered != 0 || res.SocketsOpened < 10 {
		t.Errorf("sent %d lost %d answered %d sockets %d", res.Sent, res.Lost, res.Answered, res.SocketsOpened)
	}
	if got == 0 || got > 100 {
		t.Errorf("server received %d", got)
	}
}

func TestSources(t *testing.T) {
	c := listen(t)
	var (
		mu    sync.Mutex
		peers = map[netip.Addr]bool{}
	)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			peers[from.Addr()] = true
			mu.Unlock()
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close() })
	srcs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	res := runBench(t, Config{Target: "udp://" + c.LocalAddr().String(), Concurrency: 3, Short: 1, Count: 30, Sources: srcs})
	if res.Answered != 30 || res.SocketsOpened < 30 {
		t.Errorf("answered %d, sockets %d", res.Answered, res.SocketsOpened)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(peers) != 3 {
		t.Errorf("requests came from %v, want 3 addresses", peers)
	}
}

// goCoAP runs go-coap's UDP server answering GET /time and records the
// message ids each peer used.
func goCoAP(t *testing.T) (string, func() map[string][]int32) {
	t.Helper()
	l, err := coapnet.NewListenUDP("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		mids = map[string][]int32{}
	)
	r := mux.NewRouter()
	r.HandleFunc("/time", func(w mux.ResponseWriter, m *mux.Message) {
		mu.Lock()
		peer := w.Conn().RemoteAddr().String()
		mids[peer] = append(mids[peer], m.MessageID())
		mu.Unlock()
		w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader([]byte("2026-11-23T00:00:00Z")))
	})
	s := coapudp.NewServer(options.WithMux(r))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Stop()
		l.Close()
		<-done
	})
	return "coap://" + l.LocalAddr().String() + "/time", func() map[string][]int32 {
		mu.Lock()
		defer mu.Unlock()
		return mids
	}
}

func TestCoAPShortLivedSockets(t *testing.T) {
	target, mids := goCoAP(t)
	res := runBench(t, Config{Target: target, Concurrency: 8, Sockets: 8, Short: 4, Count: 400})
	if res.Sent != 400 || res.Answered != 400 || res.Lost != 0 {
		t.Errorf("sent %d answered %d lost %d", res.Sent, res.Answered, res.Lost)
	}
	if res.SocketsOpened < 100 {
		t.Errorf("%d sockets opened, want at least 400/4", res.SocketsOpened)
	}
	checkNoReuse(t, mids())
}

// checkNoReuse fails t if a peer used a CoAP message id twice.
func checkNoReuse(t *testing.T, mids map[string][]int32) {
	t.Helper()
	for peer, ids := range mids {
		seen := map[int32]bool{}
		for _, id := range ids {
			if seen[id] {
				t.Errorf("peer %s reused message id %d", peer, id)
			}
			seen[id] = true
		}
	}
}

func TestCoAPLongLivedSockets(t *testing.T) {
	target, mids := goCoAP(t)
	res := runBench(t, Config{Target: target, Concurrency: 16, Sockets: 2, Count: 1000})
	if res.Answered != 1000 || res.SocketsOpened != 2 {
		t.Errorf("answered %d, sockets %d", res.Answered, res.SocketsOpened)
	}
	checkNoReuse(t, mids())
}

// A CoAP socket is replaced before its message ids wrap.
func TestCoAPMessageIDs(t *testing.T) {
	tg, err := parseTarget("coap://127.0.0.1/time?x=1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if tg.host != "127.0.0.1:5683" || tg.codec.perSocket() != 65536 {
		t.Errorf("host %q, per socket %d", tg.host, tg.codec.perSocket())
	}
	b := tg.codec.request(nil, 0x0102030405060708, 65535)
	if mid := binary.BigEndian.Uint16(b[2:]); mid != 65535 {
		t.Errorf("message id %d", mid)
	}
	var m message.Message
	m.Options = make(message.Options, 0, 8)
	if _, err := coapcoder.DefaultCoder.Decode(b, &m); err != nil {
		t.Fatal(err)
	}
	path, _ := m.Options.Path()
	if m.Type != message.Confirmable || m.Code != codes.GET || path != "/time" || !bytes.Equal(m.Token, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("request %v", m.String())
	}
	// A separate response is acknowledged and matched by its token.
	resp := []byte{1<<6 | coapCON<<4 | 8, byte(codes.Content), 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8}
	id, ok, failed, ack := tg.codec.reply(resp, nil)
	if !ok || failed || id != 0x0102030405060708 || !bytes.Equal(ack, []byte{1<<6 | coapACK<<4, 0, 0x12, 0x34}) {
		t.Errorf("reply: id %x ok %v failed %v ack %x", id, ok, failed, ack)
	}
	// An empty ACK answers nothing yet.
	if _, ok, _, ack := tg.codec.reply([]byte{1<<6 | coapACK<<4, 0, 0, 1}, nil); ok || ack != nil {
		t.Error("empty ACK matched")
	}
}

// rpcServer answers Calls with their id: STATUS_OK for method Ok, an error
// status for others.
func rpcServer(t *testing.T) string {
	c := listen(t)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			var call rpcpb.Call
			if proto.Unmarshal(buf[:n], &call) != nil {
				continue
			}
			r := &rpcpb.Reply{Id: call.Id, Body: call.Params}
			if call.Method != "Ok" {
				r.Status = rpcpb.Status_STATUS_UNIMPLEMENTED
			}
			b, _ := proto.Marshal(r)
			c.WriteToUDPAddrPort(b, from)
		}
	}()
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().String()
}

func TestRPC(t *testing.T) {
	addr := rpcServer(t)
	for _, tt := range []struct {
		method         string
		answered, fail int64
	}{
		{"Ok", 300, 0},
		{"Nope", 0, 300},
	} {
		t.Run(tt.method, func(t *testing.T) {
			res := runBench(t, Config{Target: fmt.Sprintf("rpc://%s/Svc/%s", addr, tt.method), Concurrency: 8, Sockets: 2, Count: 300})
			if res.Answered != tt.answered || res.Failed != tt.fail || res.Lost != 0 {
				t.Errorf("answered %d failed %d lost %d", res.Answered, res.Failed, res.Lost)
			}
		})
	}
}

func TestBadTargets(t *testing.T) {
	for _, u := range []string{"http://x/", "udp://127.0.0.1", "rpc://127.0.0.1:1/OnlyService", "coap://127.0.0.1/x?%zz"} {
		if _, err := Run(context.Background(), Config{Target: u, Count: 1}); err == nil {
			t.Errorf("%s: no error", u)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		got := h.Quantile(tt.q)
		if got > tt.want || float64(got) < float64(tt.want)*(1-1.0/64) {
			t.Errorf("q%v = %v, want %v within 1/64 below", tt.q, got, tt.want)
		}
	}
	if h.min != time.Microsecond || h.max != 100*time.Millisecond {
		t.Errorf("min %v max %v", h.min, h.max)
	}
	for v := uint64(0); v < 1<<20; v += 7 {
		if lo := lowest(bucket(v)); lo > v || bucket(lo) != bucket(v) {
			t.Fatalf("value %d: bucket %d starts at %d", v, bucket(v), lo)
		}
	}
}
