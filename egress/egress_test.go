package egress_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/egress"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// rig is an egress Server on a real embedded NATS server, with a gateway
// socket and a client socket on loopback.
type rig struct {
	t       *testing.T
	nc      *nats.Conn // the workers' side
	s       *egress.Server
	table   *exchange.Table
	gw      *net.UDPConn // the listener's socket: replies leave through it
	client  *net.UDPConn
	subject string
}

func newRig(t *testing.T, configure func(*egress.Server)) *rig {
	t.Helper()
	ns := natstest.RunServer(t)
	r := &rig{t: t, nc: natstest.Connect(t, ns), table: exchange.NewTable(64), subject: schemas.ReplySubject("udpgate", "egress-test")}
	r.gw = listenUDP(t)
	r.client = listenUDP(t)
	r.s = &egress.Server{NATS: natstest.Connect(t, ns), Subject: r.subject, Table: r.table, Sweep: 10 * time.Millisecond}
	if configure != nil {
		configure(r.s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-r.s.Ready():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("egress not ready after 10s")
	}
	return r
}

func listenUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// open opens an exchange for a request from the rig's client to its
// gateway socket, with deadline d from now.
func (r *rig) open(d time.Duration, rep exchange.Replier) (seq uint64, id string) {
	r.t.Helper()
	now := time.Now()
	seq, _, err := r.table.Open(exchange.Exchange{
		Conn: r.gw, Remote: r.client.LocalAddr().(*net.UDPAddr).AddrPort(), Local: r.gw.LocalAddr().(*net.UDPAddr).AddrPort(),
		Port: r.gw.LocalAddr().(*net.UDPAddr).AddrPort().Port(), Received: now, Deadline: now.Add(d), Replier: rep,
	}, now)
	if err != nil {
		r.t.Fatal(err)
	}
	return seq, r.table.ID(seq)
}

// reply publishes a worker's reply to the exchange id.
func (r *rig) reply(id string, status string, body []byte) {
	r.t.Helper()
	m := nats.NewMsg(r.subject + "." + id)
	m.Data = body
	if status != "" {
		m.Header.Set(schemas.HeaderStatus, status)
	}
	if err := r.nc.PublishMsg(m); err != nil {
		r.t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
}

// read returns the next datagram the client receives and where it came
// from, or nil after wait.
func (r *rig) read(wait time.Duration) ([]byte, *net.UDPAddr) {
	r.t.Helper()
	buf := make([]byte, 2048)
	r.client.SetReadDeadline(time.Now().Add(wait))
	n, from, err := r.client.ReadFromUDP(buf)
	if err != nil {
		return nil, nil
	}
	return buf[:n], from
}

// eventually waits until cond holds, for at most 10s.
func (r *rig) eventually(what string, cond func(egress.Stats) bool) egress.Stats {
	r.t.Helper()
	limit := time.Now().Add(10 * time.Second)
	for {
		st := r.s.Stats()
		if cond(st) {
			return st
		}
		if time.Now().After(limit) {
			r.t.Fatalf("%s: not after 10s; stats %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// replier is a fake exchange.Replier that records what egress asked of it.
type replier struct {
	mu      sync.Mutex
	replies []string // statuses of Reply calls
	fails   []exchange.Failure
}

func (f *replier) Reply(status string, _ map[string][]string, _ []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies = append(f.replies, status)
	return nil
}

func (f *replier) Fail(why exchange.Failure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fails = append(f.fails, why)
}

func (f *replier) calls() ([]string, []exchange.Failure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.replies...), append([]exchange.Failure(nil), f.fails...)
}

func TestServeRequiresItsFields(t *testing.T) {
	for _, s := range []*egress.Server{
		{},
		{Subject: "udpgate.reply.x", Table: exchange.NewTable(1)},
	} {
		if err := s.Serve(context.Background()); err == nil {
			t.Errorf("Serve(%+v) = nil, want an error", s)
		}
	}
}

// A reply leaves through the socket that received the request, to the
// address in the table, once: a second reply is dropped as a duplicate.
func TestReplyReachesTheClientFromTheListener(t *testing.T) {
	var latencies []time.Duration
	var mu sync.Mutex
	r := newRig(t, func(s *egress.Server) {
		s.Latency = func(_ uint16, d time.Duration) {
			mu.Lock()
			latencies = append(latencies, d)
			mu.Unlock()
		}
	})
	_, id := r.open(5*time.Second, nil)
	r.reply(id, "", []byte("pong"))
	got, from := r.read(5 * time.Second)
	if string(got) != "pong" {
		t.Fatalf("client got %q, want %q", got, "pong")
	}
	if from.AddrPort() != r.gw.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Errorf("reply from %s, want the listener's %s", from, r.gw.LocalAddr())
	}
	r.reply(id, "", []byte("again"))
	st := r.eventually("the second reply counted", func(st egress.Stats) bool { return st.Duplicate == 1 })
	if st.Sent != 1 {
		t.Errorf("Sent = %d, want 1", st.Sent)
	}
	if got, _ := r.read(100 * time.Millisecond); got != nil {
		t.Errorf("client got a second datagram %q", got)
	}
	port := r.gw.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	if ps := r.s.PortStats()[port]; ps.Sent != 1 || ps.Duplicate != 1 {
		t.Errorf("PortStats[%d] = %+v, want Sent 1, Duplicate 1", port, ps)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(latencies) != 1 || latencies[0] <= 0 {
		t.Errorf("Latency calls %v, want one positive", latencies)
	}
}

// Replies that match no open exchange are counted, never sent.
func TestUnknownRepliesAreDropped(t *testing.T) {
	r := newRig(t, nil)
	other := exchange.NewTable(64) // another process's table: same shape, other boot id
	r.reply(other.ID(1), "", []byte("x"))
	r.reply("not-an-id", "", []byte("x"))
	_, id := r.open(5*time.Second, nil)
	r.reply(id+"0", "", []byte("x")) // a sequence number never opened
	st := r.eventually("unknown replies counted", func(st egress.Stats) bool { return st.Unknown == 3 })
	if st.Sent != 0 {
		t.Errorf("Sent = %d, want 0", st.Sent)
	}
	if got, _ := r.read(100 * time.Millisecond); got != nil {
		t.Errorf("client got %q", got)
	}
}

// An exchange past its deadline is answered as unanswered (the Replier's
// Fail, NoAnswer) and counted once; a reply after it is late.
func TestExpiredExchanges(t *testing.T) {
	r := newRig(t, nil)
	rep := &replier{}
	_, id := r.open(20*time.Millisecond, rep)
	_, rawID := r.open(20*time.Millisecond, nil)
	r.eventually("both expired", func(st egress.Stats) bool { return st.NoAnswer == 2 })
	r.reply(id, "", []byte("late"))
	r.reply(rawID, "", []byte("late"))
	st := r.eventually("late replies counted", func(st egress.Stats) bool { return st.Late == 2 })
	if st.Sent != 0 || st.NoAnswer != 2 {
		t.Errorf("stats %+v, want Sent 0, NoAnswer 2", st)
	}
	replies, fails := rep.calls()
	if len(replies) != 0 || len(fails) != 1 || fails[0] != exchange.NoAnswer {
		t.Errorf("Replier got replies %v, fails %v; want one Fail(NoAnswer)", replies, fails)
	}
	if got, _ := r.read(100 * time.Millisecond); got != nil {
		t.Errorf("raw client got %q after its deadline", got)
	}
}

// A worker's error closes the exchange: a raw client gets nothing, a
// protocol Replier gets the status to answer in its protocol.
func TestWorkerErrors(t *testing.T) {
	r := newRig(t, nil)
	_, rawID := r.open(5*time.Second, nil)
	rep := &replier{}
	_, id := r.open(5*time.Second, rep)
	r.reply(rawID, schemas.StatusError, []byte("boom"))
	r.reply(id, schemas.StatusError, []byte("boom"))
	st := r.eventually("errors counted", func(st egress.Stats) bool { return st.WorkerError == 2 })
	if st.Sent != 1 {
		t.Errorf("Sent = %d, want 1 (the Replier's)", st.Sent)
	}
	if replies, _ := rep.calls(); len(replies) != 1 || replies[0] != schemas.StatusError {
		t.Errorf("Replier got %v, want one %q", replies, schemas.StatusError)
	}
	if got, _ := r.read(100 * time.Millisecond); got != nil {
		t.Errorf("raw client got %q for a worker error", got)
	}
}

// Allow can refuse a reply (the amplification limit): nothing is sent.
func TestAllowRefuses(t *testing.T) {
	r := newRig(t, func(s *egress.Server) {
		s.Allow = func(_ exchange.Exchange, _ string, _ nats.Header, body []byte) bool { return len(body) <= 4 }
	})
	_, big := r.open(5*time.Second, nil)
	_, small := r.open(5*time.Second, nil)
	r.reply(big, "", []byte("too large"))
	r.reply(small, "", []byte("ok"))
	if got, _ := r.read(5 * time.Second); string(got) != "ok" {
		t.Fatalf("client got %q, want only %q", got, "ok")
	}
	if got, _ := r.read(100 * time.Millisecond); got != nil {
		t.Errorf("client got %q, which Allow refused", got)
	}
	if st := r.s.Stats(); st.Sent != 1 {
		t.Errorf("Sent = %d, want 1", st.Sent)
	}
}

// noResponders publishes what NATS sends to a request's reply subject when
// no subscription received it.
func (r *rig) noResponders(id, subject string) {
	r.t.Helper()
	m := nats.NewMsg(r.subject + "." + id)
	m.Header.Set("Status", "503")
	m.Header.Set("Nats-Subject", subject)
	if err := r.nc.PublishMsg(m); err != nil {
		r.t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
}

// A request no direct group took, and no durable group serves, is settled
// at once: a raw one released, a CoAP or RPC one answered as unserved. One
// a durable group serves stays open for it.
func TestNoResponders(t *testing.T) {
	const durableSubject = "udpgate.in.9.durable"
	var mu sync.Mutex
	known := false // the durable groups are not read yet
	var unserved []string
	r := newRig(t, func(s *egress.Server) {
		s.Durable = func(subject string, _ time.Time) (bool, bool) {
			mu.Lock()
			defer mu.Unlock()
			return subject == durableSubject, known
		}
		s.Unserved = func(ex exchange.Exchange, subject string) (bool, func()) {
			mu.Lock()
			unserved = append(unserved, subject)
			mu.Unlock()
			return false, func() { ex.Replier.Fail(exchange.Unserved) }
		}
	})
	rawSeq, rawID := r.open(5*time.Second, nil)
	rep := &replier{}
	_, coapID := r.open(5*time.Second, rep)
	durSeq, durID := r.open(5*time.Second, nil)
	r.noResponders(rawID, "udpgate.in.9.raw")
	r.noResponders(coapID, "udpgate.in.9.coap")
	r.noResponders(durID, durableSubject)
	r.eventually("no-responders counted", func(st egress.Stats) bool { return st.NoResponders == 3 })
	if n := r.s.Undecided(); n != 3 {
		t.Fatalf("Undecided() = %d before the durable groups are known, want 3", n)
	}
	mu.Lock()
	known = true
	mu.Unlock()
	r.s.Wake()
	st := r.eventually("settled", func(st egress.Stats) bool { return st.NoWorker == 1 && st.Unserved == 1 })
	if st.NoAnswer != 0 || st.Discovery != 0 {
		t.Errorf("stats %+v", st)
	}
	if _, open := r.table.Pending(rawSeq); open {
		t.Error("the raw request is still open")
	}
	if _, open := r.table.Pending(durSeq); !open {
		t.Error("the request a durable group serves was closed")
	}
	if _, fails := rep.calls(); len(fails) != 1 || fails[0] != exchange.Unserved {
		t.Errorf("Replier fails %v, want one Unserved", fails)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(unserved) != 1 || unserved[0] != "udpgate.in.9.coap" {
		t.Errorf("Unserved called for %v, want the CoAP request's subject", unserved)
	}
}

// blockingReplier holds Reply until release is closed.
type blockingReplier struct {
	entered, release chan struct{}
}

func (b *blockingReplier) Reply(string, map[string][]string, []byte) error {
	close(b.entered)
	<-b.release
	return nil
}

func (b *blockingReplier) Fail(exchange.Failure) {}

// An exchange leaves the table before its answer is written: Busy says
// that egress still has it, so a stopping gateway waits for the answer
// before it closes the socket.
func TestBusyUntilTheAnswerIsWritten(t *testing.T) {
	r := newRig(t, nil)
	rep := &blockingReplier{entered: make(chan struct{}), release: make(chan struct{})}
	_, id := r.open(5*time.Second, rep)
	r.reply(id, "", []byte("x"))
	select {
	case <-rep.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the reply never reached the Replier")
	}
	if n, busy := r.table.Len(), r.s.Busy(); n != 0 || busy != 1 {
		t.Errorf("while the answer is written: table %d open, Busy %d; want 0 and 1", n, busy)
	}
	close(rep.release)
	r.eventually("sent, and not busy", func(st egress.Stats) bool { return st.Sent == 1 && r.s.Busy() == 0 })
}
