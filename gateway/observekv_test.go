package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// testBucket is the Observe bucket of the tests.
const testBucket = "observe_test"

// startObserveNode runs a gateway node with the coap listener c and the
// Observe bucket testBucket, and returns a function that stops it and
// waits until it has.
func startObserveNode(t *testing.T, s *server.Server, c *net.UDPConn, node string) (*Gateway, func()) {
	t.Helper()
	g := &Gateway{NATS: natstest.Connect(t, s), Node: node, DrainTimeout: -1,
		Observe:   ObserveBucket{Name: testBucket},
		Listeners: []Listener{{Conn: c, Protocol: schemas.ProtocolCoAP}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway %s: Serve: %v", node, err)
		}
	}
	t.Cleanup(stop)
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway %s stopped before it was ready: %v", node, err)
	}
	return g, stop
}

// notification is what an observer received: the payload and the
// Observe option.
type notification struct {
	body string
	seq  uint32
}

// TestObserveRestart: go-coap's client registers with a gateway, which
// stops; a new gateway with the same node name on the same address
// reads the registration back from the bucket, and the client gets the
// next notification, with a fresher sequence number, without
// registering again.
func TestObserveRestart(t *testing.T) {
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().(*net.UDPAddr)
	port := uint16(addr.Port)
	regs := observeWorker(t, s, port)
	n := newNotifier(t, s, port)
	a, stopA := startObserveNode(t, s, c, "restart-node")

	co := dialCoAP(t, addr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan notification, 16)
	obs, err := co.Observe(ctx, "/sensors/1", func(m *pool.Message) {
		body, _ := m.ReadBody()
		seq, _ := m.Observe()
		got <- notification{string(body), seq}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Cancel(context.Background())
	if h := <-regs; h != schemas.CoAPObserveRegister {
		t.Fatalf("the worker saw %s %q", schemas.HeaderCoAPObserve, h)
	}
	receive := func(want string) notification {
		t.Helper()
		select {
		case v := <-got:
			if v.body != want {
				t.Fatalf("received %q, want %q", v.body, want)
			}
			return v
		case <-ctx.Done():
			t.Fatalf("%q not received", want)
		}
		return notification{}
	}
	receive("registered")
	if c := n.notify([]byte("before"), nil); c != 1 {
		t.Fatalf("notified %d observers, want 1", c)
	}
	before := receive("before")
	waitFor(t, "the registration in the bucket", func() bool { return a.Stats().Observe.Puts >= 1 })
	if st := a.Stats().Observe; st.Bucket != testBucket || st.Held != 1 || st.Failed+st.Dropped != 0 {
		t.Fatalf("node A's bucket stats %+v", st)
	}
	stopA()

	c2, err := net.ListenUDP("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := startObserveNode(t, s, c2, "restart-node")
	name := schemas.Listener(port, schemas.ProtocolCoAP)
	waitFor(t, "the registration restored", func() bool { return b.Stats().CoAP[name].Observe.Restored == 1 })
	// Node B's subscriptions are made before the restore; NATS may not
	// have them yet.
	waitFor(t, "a notification after the restart", func() bool {
		m := nats.NewMsg(n.subject)
		m.Data = []byte("after")
		r, err := n.nc.RequestMsg(m, 10*time.Second)
		if errors.Is(err, nats.ErrNoResponders) {
			return false
		}
		if err != nil || r.Header.Get(schemas.HeaderCoAPObservers) != "1" {
			t.Fatalf("after the restart: %v, %v observers notified, want 1", err, r.Header)
		}
		return true
	})
	after := receive("after")
	// go-coap drops a notification that is not fresher; check all the
	// same (RFC 7641 §3.4).
	if !(before.seq < after.seq && after.seq-before.seq < 1<<23 || before.seq > after.seq && before.seq-after.seq > 1<<23) {
		t.Fatalf("sequence number %d after the restart is not fresher than %d", after.seq, before.seq)
	}
	if st := b.Stats().CoAP[name].Observe; st.Restored != 1 || st.Observers != 1 || st.CON != 1 {
		t.Fatalf("node B's Observe stats %+v: want 1 restored, notified with a CON", st)
	}
	if st := b.Stats().Observe; st.Loaded != 1 || st.Held != 1 {
		t.Fatalf("node B's bucket stats %+v", st)
	}
	// Cancelling deletes the key.
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the key deleted", func() bool { return b.Stats().Observe.Deletes >= 1 })
	observed, err := (&workers.Notifier{NATS: n.nc, Port: port, Bucket: testBucket}).Observed(ctx, "/sensors/1")
	if err != nil || observed {
		t.Fatalf("Observed after the cancel: %v, %v", observed, err)
	}
}

// TestObserveStatusTwoNodes: two gateway nodes on loopback, sharing one
// NATS, each with an observer of /sensors/1 on the same port: the status
// of either lists the resource with both, and a worker learns that it is
// observed.
func TestObserveStatusTwoNodes(t *testing.T) {
	s := natstest.RunServer(t)
	c1, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c1.LocalAddr().(*net.UDPAddr).Port
	c2, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port})
	if err != nil {
		t.Fatalf("the same port on 127.0.0.2: %v", err)
	}
	observeWorker(t, s, uint16(port))
	g1, _ := startObserveNode(t, s, c1, "node-1")
	g2, _ := startObserveNode(t, s, c2, "node-2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc := natstest.Connect(t, s)
	nf := &workers.Notifier{NATS: nc, Port: uint16(port), Bucket: testBucket}
	if ok, err := nf.Observed(ctx, "/sensors/1"); err != nil || ok {
		t.Fatalf("Observed before any registration: %v, %v", ok, err)
	}
	for _, c := range []*net.UDPConn{c1, c2} {
		co := dialCoAP(t, c.LocalAddr().String())
		got := make(chan struct{}, 16)
		obs, err := co.Observe(ctx, "/sensors/1", func(*pool.Message) { got <- struct{}{} })
		if err != nil {
			t.Fatal(err)
		}
		defer obs.Cancel(context.Background())
		<-got
	}
	waitFor(t, "both registrations in the bucket", func() bool {
		return g1.Stats().Observe.Puts >= 1 && g2.Stats().Observe.Puts >= 1
	})
	want := ObservedResource{Port: uint16(port), Resource: "/sensors/1", Observers: 2,
		Subject: schemas.NotifySubject(schemas.DefaultPrefix, uint16(port), []string{"sensors", "1"}),
		Nodes:   map[string]int{"node-1": 1, "node-2": 1}}
	for _, g := range []*Gateway{g1, g2} {
		st := g.Status(ctx)
		if st.ObserveBucket != testBucket || len(st.Observed) != 1 {
			t.Fatalf("%s: status bucket %q, observed %+v", g.Node, st.ObserveBucket, st.Observed)
		}
		o := st.Observed[0]
		if o.Port != want.Port || o.Resource != want.Resource || o.Subject != want.Subject || o.Observers != 2 ||
			len(o.Nodes) != 2 || o.Nodes["node-1"] != 1 || o.Nodes["node-2"] != 1 {
			t.Fatalf("%s: observed %+v, want %+v", g.Node, o, want)
		}
	}
	if ok, err := nf.Observed(ctx, "/sensors/1"); err != nil || !ok {
		t.Fatalf("Observed: %v, %v", ok, err)
	}
	if ok, err := nf.Observed(ctx, "/sensors/2"); err != nil || ok {
		t.Fatalf("Observed of another resource: %v, %v", ok, err)
	}
}

// TestObserveNoBucket: a gateway whose Observe bucket JetStream refuses
// keeps registrations in memory, and says so.
func TestObserveNoBucket(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.JetStream(t, s)
	// A stream that takes the bucket's subjects: the bucket cannot be made.
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "squat", Subjects: []string{"$KV.observe_test.>"}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	observeWorker(t, s, port)
	g, _ := startObserveNode(t, s, c, "memory-node")
	if st := g.Stats().Observe; st.Bucket != "" {
		t.Fatalf("bucket stats %+v, want none", st)
	}
	co := dialCoAP(t, c.LocalAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan string, 16)
	obs, err := co.Observe(ctx, "/sensors/1", func(m *pool.Message) {
		body, _ := m.ReadBody()
		got <- string(body)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Cancel(context.Background())
	<-got
	if c := newNotifier(t, s, port).notify([]byte("x"), nil); c != 1 {
		t.Fatalf("notified %d, want 1", c)
	}
	if v := <-got; v != "x" {
		t.Fatalf("received %q", v)
	}
	if st := g.Status(ctx); st.ObserveBucket != "" || st.Observed != nil {
		t.Fatalf("status: bucket %q, observed %+v", st.ObserveBucket, st.Observed)
	}
}

// TestObserveStoreQueue: writes beyond the queue are dropped and
// counted, never waited for; the refresh writes what they missed; a
// write the bucket refuses is counted failed.
func TestObserveStoreQueue(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openObserve(ctx, js, ObserveBucket{Name: testBucket, Queue: 1}, "queue-node", schemas.DefaultPrefix, slog.New(slog.DiscardHandler))
	if st == nil {
		t.Fatal("no store")
	}
	peer := netip.MustParseAddrPort("127.0.0.1:40000")
	for i := range 3 {
		st.Register(coap.Registration{Peer: peer, Token: []byte{byte(i)}, Resource: "sensors.1", Op: "GET /sensors/1", Port: 5683, SZX: 6, Registered: time.Now()})
	}
	if s := st.stats(); s.Dropped != 2 || s.Held != 3 {
		t.Fatalf("stats %+v: want 2 dropped, 3 held", s)
	}
	st.write(ctx, <-st.queue)
	st.refresh(ctx)
	regs, err := st.load(ctx, 5683)
	if err != nil || len(regs) != 3 {
		t.Fatalf("load: %d registrations, %v", len(regs), err)
	}
	for _, r := range regs {
		if r.Peer != peer || r.Resource != "sensors.1" || r.Op != "GET /sensors/1" || r.SZX != 6 || r.Port != 5683 || r.Registered.IsZero() {
			t.Fatalf("registration read back: %+v", r)
		}
	}
	if s := st.stats(); s.Puts != 4 || s.Refreshes != 3 || s.Loaded != 3 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Another node's, and another port's, are not read back.
	if regs, err := st.load(ctx, 5684); err != nil || len(regs) != 0 {
		t.Fatalf("load of another port: %d, %v", len(regs), err)
	}
	st.Deregister(regs[0])
	st.write(ctx, <-st.queue)
	if regs, _ := st.load(ctx, 5683); len(regs) != 2 || st.stats().Deletes != 1 {
		t.Fatalf("after a deregistration: %d read back, stats %+v", len(regs), st.stats())
	}
	if err := js.DeleteKeyValue(ctx, testBucket); err != nil {
		t.Fatal(err)
	}
	st.refresh(ctx)
	if s := st.stats(); s.Failed != 2 {
		t.Fatalf("stats %+v: want the 2 refreshes of a deleted bucket failed", s)
	}
}

// TestObserveCoAPSNotRestored: a coaps listener does not restore the
// registrations its node held, whose DTLS sessions ended with the
// process: it deletes their keys.
func TestObserveCoAPSNotRestored(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	// The registration of a process before.
	st := openObserve(ctx, js, ObserveBucket{Name: testBucket}, "dtls-node", schemas.DefaultPrefix, slog.New(slog.DiscardHandler))
	st.Register(coap.Registration{Peer: netip.MustParseAddrPort("127.0.0.1:40000"), Token: []byte{1}, Resource: "sensors.1", Port: port, Registered: time.Now()})
	st.write(ctx, <-st.queue)
	nf := &workers.Notifier{NATS: natstest.Connect(t, s), Port: port, Bucket: testBucket}
	if ok, err := nf.Observed(ctx, "/sensors/1"); err != nil || !ok {
		t.Fatalf("Observed before: %v, %v", ok, err)
	}

	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("alice:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := dtls.LoadKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "dtls-node", Observe: ObserveBucket{Name: testBucket},
		Listeners: []Listener{{Conn: c, Protocol: schemas.ProtocolCoAP, DTLS: &dtls.Config{Keys: keys}}}}
	serveGateway(t, g)
	waitFor(t, "the key deleted", func() bool { return g.Stats().Observe.Deletes == 1 })
	if ok, err := nf.Observed(ctx, "/sensors/1"); err != nil || ok {
		t.Fatalf("Observed after: %v, %v", ok, err)
	}
	if st := g.Stats().CoAP[schemas.Listener(port, schemas.ProtocolCoAP)].Observe; st.Restored != 0 || st.Observers != 0 {
		t.Fatalf("Observe stats %+v", st)
	}
}
