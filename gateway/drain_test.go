package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestGracefulStop: a gateway told to stop while requests are pending
// stops reading at once, and answers every pending exchange before Serve
// returns: the raw requests that its slow worker answers later, and a CoAP
// request nobody answers with its 5.04 at the deadline. Then its sockets
// are closed.
func TestGracefulStop(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "n1", Deadline: time.Second, DrainTimeout: 10 * time.Second}
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: raw, Protocol: schemas.ProtocolRaw})
	coapAddr := coapListener(t, g)
	rawAddr := raw.LocalAddr().(*net.UDPAddr)
	const handling = 300 * time.Millisecond
	// A slow group that handles every request at once, each taking
	// handling.
	wc := natstest.Connect(t, s)
	if _, err := wc.QueueSubscribe(schemas.InSubject("udpgate", uint16(rawAddr.Port)), "slow", func(m *nats.Msg) {
		go func() {
			time.Sleep(handling)
			m.Respond(append([]byte("late:"), m.Data...))
		}()
	}); err != nil {
		t.Fatal(err)
	}
	if err := wc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A group that takes the CoAP path and never answers it.
	contractWorker(t, s, "silent", schemas.CoAPSubject("udpgate", uint16(coapAddr.Port), "GET", []string{"silent"}), func(*nats.Msg) []byte { return nil })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	select {
	case <-g.Ready():
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready")
	}

	const n = 20
	replies := make(chan string, n)
	var clients sync.WaitGroup
	for i := range n {
		clients.Go(func() {
			got, err := exchangeUDP(t, rawAddr.String(), []byte("r"+itoa(i)), 10*time.Second)
			if err != nil {
				replies <- "error: " + err.Error()
				return
			}
			replies <- string(got)
		})
	}
	co := dialCoAP(t, coapAddr.String())
	coapCode := make(chan codes.Code, 1)
	go func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		resp, err := co.Get(cctx, "/silent")
		if err != nil {
			coapCode <- 0
			return
		}
		coapCode <- resp.Code()
	}()
	waitFor(t, "every request open", func() bool { return g.Stats().Pending == n+1 })
	stopped := time.Now()
	cancel()

	// It stops reading at once: a request sent now is not published.
	time.Sleep(50 * time.Millisecond)
	before := g.Stats().Ingress
	c, err := net.DialUDP("udp", nil, rawAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("after the stop"))

	clients.Wait()
	close(replies)
	got := map[string]bool{}
	for r := range replies {
		got[r] = true
	}
	missing := 0
	for i := range n {
		if !got["late:r"+itoa(i)] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d requests unanswered after the stop; replies %v", missing, n, got)
	}
	if code := <-coapCode; code != codes.GatewayTimeout {
		t.Errorf("CoAP GET /silent: %v, want 5.04 at its deadline", code)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(g.DrainTimeout):
		t.Fatalf("Serve did not return within the drain timeout")
	}
	took := time.Since(stopped)
	if took < handling {
		t.Errorf("Serve returned %v after the stop, before the worker's answers (%v)", took, handling)
	}
	st := g.Stats()
	for name, in := range st.Ingress {
		if in.Received != before[name].Received {
			t.Errorf("%s: read %d datagrams after the stop", name, in.Received-before[name].Received)
		}
	}
	if st.Drains != 1 || st.DrainLeft != 0 || st.Pending != 0 {
		t.Errorf("drains %d, left %d, pending %d; want 1, 0, 0", st.Drains, st.DrainLeft, st.Pending)
	}
	// The sockets are closed once Serve has returned.
	if _, err := raw.WriteToUDP([]byte("x"), rawAddr); !errors.Is(err, net.ErrClosed) {
		t.Errorf("raw socket after Serve: %v, want closed", err)
	}
}

// TestDrainTimeout: a drain that outlasts DrainTimeout ends there, and the
// exchanges left open are counted.
func TestDrainTimeout(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "n1", Deadline: time.Minute, DrainTimeout: 300 * time.Millisecond}
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: raw, Protocol: schemas.ProtocolRaw})
	rawAddr := raw.LocalAddr().(*net.UDPAddr)
	contractWorker(t, s, "silent", schemas.InSubject("udpgate", uint16(rawAddr.Port)), func(*nats.Msg) []byte { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	<-g.Ready()
	c, err := net.DialUDP("udp", nil, rawAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("never answered"))
	waitFor(t, "the request open", func() bool { return g.Stats().Pending == 1 })
	stopped := time.Now()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if took := time.Since(stopped); took < g.DrainTimeout || took > g.Deadline/2 {
		t.Errorf("Serve returned %v after the stop; want the drain timeout %v, far from the deadline %v", took, g.DrainTimeout, g.Deadline)
	}
	if st := g.Stats(); st.Drains != 1 || st.DrainLeft != 1 {
		t.Errorf("drains %d, left %d; want 1 and 1", st.Drains, st.DrainLeft)
	}
}

// TestCaptureRetriedUntilStored: a capture copy JetStream does not take
// (the stream gone, as while a stream elects a leader) is published again
// until its deadline: once the stream is back, it is stored, and a
// durable group sees the request. The client was answered by a direct
// group meanwhile.
func TestCaptureRetriedUntilStored(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 3 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	contractWorker(t, s, "echo", schemas.InSubject("udpgate", uint16(addrs[0].Port)), echo)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, schemas.StreamIn); err != nil {
		t.Fatal(err)
	}
	if _, err := exchangeUDP(t, addrs[0].String(), []byte("captured late"), 5*time.Second); err != nil {
		t.Fatalf("the direct group did not answer without the stream: %v", err)
	}
	listener := itoa(addrs[0].Port) + "/raw"
	waitFor(t, "a capture retried", func() bool { return g.Stats().Ingress[listener].CaptureRetried > 0 })
	if _, err := ingress.EnsureStream(ctx, js, g.Stream); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the copy stored", func() bool { return g.Stats().Ingress[listener].Captured == 1 })
	if st := g.Stats().Ingress[listener]; st.CaptureFailed != 0 {
		t.Errorf("capture failed %d, want 0: %+v", st.CaptureFailed, st)
	}
	st, err := js.Stream(ctx, schemas.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("the stream holds %d messages, want the one copy", n)
	}
}

// TestCaptureGapAfterDeadline: a capture copy that JetStream never takes
// is tried until its request's deadline, then counted as a gap, once.
func TestCaptureGapAfterDeadline(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	contractWorker(t, s, "echo", schemas.InSubject("udpgate", uint16(addrs[0].Port)), echo)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, schemas.StreamIn); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if _, err := exchangeUDP(t, addrs[0].String(), []byte("never captured"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	listener := itoa(addrs[0].Port) + "/raw"
	waitFor(t, "the gap counted", func() bool { return g.Stats().Ingress[listener].CaptureFailed == 1 })
	if took := time.Since(sent); took < g.Deadline/2 {
		t.Errorf("gap counted %v after the request, long before its %v deadline", took, g.Deadline)
	}
	if st := g.Stats().Ingress[listener]; st.CaptureRetried == 0 || st.Captured != 0 {
		t.Errorf("%+v: want retries, nothing captured", st)
	}
}
