package coap

import (
	"bytes"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
)

// observeGET returns a CON GET of path with token tok and, unless obs is
// negative, an Observe option obs.
func observeGET(t testing.TB, mid uint16, tok byte, obs int, path ...string) []byte {
	t.Helper()
	m := message.Message{Type: typeCON, Code: codes.GET, MessageID: int32(mid), Token: []byte{tok}}
	if obs >= 0 {
		m.Options = m.Options.Add(message.Option{ID: message.Observe, Value: encodeUint(uint32(obs))})
	}
	for _, p := range path {
		m.Options = append(m.Options, message.Option{ID: message.URIPath, Value: []byte(p)})
	}
	b, err := appendEncoded(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// accept is the reply header of a worker that accepts a registration.
var accept = map[string][]string{schemas.HeaderCoAPObserve: {"1"}}

// register registers the test client as an observer of path with token
// tok and returns the response.
func (te *testEdge) register(t testing.TB, mid uint16, tok byte, path ...string) message.Message {
	t.Helper()
	r := te.receive(observeGET(t, mid, tok, 0, path...))
	if r == nil {
		t.Fatal("registration not published")
	}
	if r.Observe != "0" {
		t.Fatalf("Observe %q, want 0", r.Observe)
	}
	if err := r.Reply(schemas.StatusOK, accept, []byte("first")); err != nil {
		t.Fatal(err)
	}
	return decodeAnswer(t, te.answer(time.Second))
}

// observeOf returns the Observe option of m and whether it has one.
func observeOf(m message.Message) (uint32, bool) {
	for _, o := range m.Options {
		if o.ID == message.Observe {
			return decodeUint(o.Value), true
		}
	}
	return 0, false
}

func TestObserveRegisterAndNotify(t *testing.T) {
	te := newTestEdge(t, Config{ObserveCONEvery: 3})
	res := te.register(t, 1, 0x42, "sensors", "a b")
	seq, ok := observeOf(res)
	if !ok || res.Code != codes.Content || res.Type != typeACK {
		t.Fatalf("registration response %v %v, Observe %v", res.Type, res.Code, ok)
	}
	resource := "sensors.a~20b"
	if want := schemas.NotifySubject("p", 5683, []string{"sensors", "a b"}); want != "p.notify.5683."+resource {
		t.Fatalf("NotifySubject %q", want)
	}
	if n := te.Observers(resource); n != 1 {
		t.Fatalf("Observers %d, want 1", n)
	}
	h := map[string][]string{schemas.HeaderCoAPContentFormat: {"0"}, schemas.HeaderCoAPMaxAge: {"5"}}
	var types []message.Type
	for i := range 6 {
		n, err := te.Notify(resource, h, []byte{'v', byte('0' + i)})
		if err != nil || n != 1 {
			t.Fatalf("Notify: %d, %v", n, err)
		}
		m := decodeAnswer(t, te.answer(time.Second))
		s, ok := observeOf(m)
		if !ok || !fresher(seq, s, 0) {
			t.Fatalf("notification %d: Observe %d (%v), not fresher than %d", i, s, ok, seq)
		}
		seq = s
		if !bytes.Equal(m.Token, []byte{0x42}) || m.Code != codes.Content || string(m.Payload) != string([]byte{'v', byte('0' + i)}) {
			t.Fatalf("notification %d: token % x, code %v, payload %q", i, m.Token, m.Code, m.Payload)
		}
		if cf, err := m.Options.ContentFormat(); err != nil || cf != 0 {
			t.Fatalf("notification %d: Content-Format %v, %v", i, cf, err)
		}
		types = append(types, m.Type)
		if m.Type == typeCON {
			te.receive(empty(typeACK, uint16(m.MessageID)))
		}
	}
	want := []message.Type{typeNON, typeNON, typeCON, typeNON, typeNON, typeCON}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("types %v, want %v", types, want)
		}
	}
	st := te.Stats().Observe
	if st.Observers != 1 || st.Registrations != 1 || st.NON != 4 || st.CON != 2 {
		t.Fatalf("stats %+v", st)
	}
	if n, _ := te.Notify("other", nil, []byte("x")); n != 0 {
		t.Fatalf("Notify of an unobserved resource: %d", n)
	}
}

func TestObserveNotAccepted(t *testing.T) {
	for _, tt := range []struct {
		name   string
		header map[string][]string
		status string
	}{
		{"no header", nil, schemas.StatusOK},
		{"4.04", map[string][]string{schemas.HeaderCoAPObserve: {"1"}, schemas.HeaderCoAPCode: {"4.04"}}, schemas.StatusOK},
		{"error status", accept, schemas.StatusError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			te := newTestEdge(t, Config{})
			r := te.receive(observeGET(t, 1, 7, 0, "r"))
			r.Reply(tt.status, tt.header, []byte("x"))
			m := decodeAnswer(t, te.answer(time.Second))
			if _, ok := observeOf(m); ok {
				t.Fatal("response has an Observe option")
			}
			if n := te.Observers("r"); n != 0 {
				t.Fatalf("Observers %d", n)
			}
		})
	}
}

func TestObserveReregistrationDeclined(t *testing.T) {
	te := newTestEdge(t, Config{})
	for i, answer := range []func(r *Request){
		func(r *Request) { r.Reply(schemas.StatusOK, nil, []byte("no longer observable")) },
		func(r *Request) {
			r.Reply(schemas.StatusOK, map[string][]string{schemas.HeaderCoAPCode: {"4.04"}}, nil)
		},
		func(r *Request) { r.Fail(exchange.NoAnswer) },
	} {
		te.register(t, uint16(10*i+1), 7, "r")
		r := te.receive(observeGET(t, uint16(10*i+2), 7, 0, "r"))
		answer(r)
		if m := decodeAnswer(t, te.answer(time.Second)); hasObserveOption(m) {
			t.Fatalf("answer %d has Observe", i)
		}
		if n := te.Observers("r"); n != 0 {
			t.Fatalf("answer %d: %d observers: the declined re-registration kept the old one", i, n)
		}
	}
	if st := te.Stats().Observe; st.Declined != 1 || st.ErrorCode != 2 || st.Observers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func hasObserveOption(m message.Message) bool {
	_, ok := observeOf(m)
	return ok
}

func TestObserveCancel(t *testing.T) {
	te := newTestEdge(t, Config{})
	notifyOne := func() message.Message {
		t.Helper()
		if n, _ := te.Notify("r", nil, []byte("x")); n != 1 {
			t.Fatalf("notified %d, want 1", n)
		}
		return decodeAnswer(t, te.answer(time.Second))
	}
	t.Run("observe=1", func(t *testing.T) {
		te.register(t, 1, 7, "r")
		r := te.receive(observeGET(t, 2, 7, 1, "r"))
		if r == nil || r.Observe != "1" {
			t.Fatal("a GET with Observe 1 is published as any GET")
		}
		if n := te.Observers("r"); n != 0 {
			t.Fatalf("Observers %d after Observe 1", n)
		}
	})
	t.Run("RST of a NON", func(t *testing.T) {
		te.register(t, 3, 8, "r")
		notifyOne()
		m := notifyOne()
		te.receive(empty(typeRST, uint16(m.MessageID)))
		if n := te.Observers("r"); n != 0 {
			t.Fatalf("Observers %d after RST", n)
		}
	})
	t.Run("RST of a CON", func(t *testing.T) {
		te.ObserveCONEvery = 1
		defer func() { te.ObserveCONEvery = DefaultObserveCONEvery }()
		te.register(t, 4, 9, "r")
		m := notifyOne()
		if m.Type != typeCON {
			t.Fatalf("type %v, want CON", m.Type)
		}
		te.receive(empty(typeRST, uint16(m.MessageID)))
		if n := te.Observers("r"); n != 0 {
			t.Fatalf("Observers %d after RST", n)
		}
	})
	t.Run("error notification", func(t *testing.T) {
		te.register(t, 5, 10, "r")
		if n, _ := te.Notify("r", map[string][]string{schemas.HeaderCoAPCode: {"4.04"}}, nil); n != 1 {
			t.Fatalf("notified %d", n)
		}
		m := decodeAnswer(t, te.answer(time.Second))
		if _, ok := observeOf(m); ok || m.Code != codes.NotFound {
			t.Fatalf("error notification: %v, Observe %v", m.Code, ok)
		}
		if n := te.Observers("r"); n != 0 {
			t.Fatalf("Observers %d after 4.04", n)
		}
	})
	st := te.Stats().Observe
	if st.Observe1 != 1 || st.RST != 2 || st.ErrorCode != 1 || st.Observers != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestObserveUnacknowledgedDropped(t *testing.T) {
	te := newTestEdge(t, Config{ObserveCONEvery: 1, ACKTimeout: 5 * time.Millisecond})
	te.register(t, 1, 7, "r")
	if n, _ := te.Notify("r", nil, []byte("x")); n != 1 {
		t.Fatal("not notified")
	}
	// A second notification before the ACK replaces the first: one CON
	// outstanding per observer (RFC 7641 §4.5.2).
	if n, _ := te.Notify("r", nil, []byte("y")); n != 1 {
		t.Fatal("not notified")
	}
	te.mu.Lock()
	out := len(te.outgoing)
	te.mu.Unlock()
	if out != 1 {
		t.Fatalf("%d CONs outstanding, want 1", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for te.Observers("r") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("observer still registered")
		}
		te.answer(50 * time.Millisecond)
	}
	st := te.Stats()
	if st.Observe.GaveUp != 1 || st.GaveUp != 1 || st.Retransmissions != maxRetransmit {
		t.Fatalf("gave up %d (%d), retransmissions %d", st.Observe.GaveUp, st.GaveUp, st.Retransmissions)
	}
}

func TestObserveSequenceWraps(t *testing.T) {
	if nextSeq(1<<24-1) != 0 || nextSeq(5) != 6 {
		t.Fatal("nextSeq does not wrap at 2^24")
	}
	for _, tt := range []struct {
		v1, v2 uint32
		want   bool
	}{
		{1, 2, true}, {2, 1, false}, {1<<24 - 1, 0, true}, {0, 1<<24 - 1, false}, {1<<24 - 2, 3, true},
	} {
		if got := fresher(tt.v1, tt.v2, time.Second); got != tt.want {
			t.Errorf("fresher(%d, %d) = %v", tt.v1, tt.v2, got)
		}
	}
	te := newTestEdge(t, Config{})
	te.register(t, 1, 7, "r")
	te.mu.Lock()
	for o := range te.obs.byResource["r"] {
		o.seq = 1<<24 - 3
	}
	te.mu.Unlock()
	prev := uint32(1<<24 - 3)
	for range 4 {
		te.Notify("r", nil, []byte("x"))
		s, ok := observeOf(decodeAnswer(t, te.answer(time.Second)))
		if !ok || !fresher(prev, s, 0) {
			t.Fatalf("sequence %d after %d", s, prev)
		}
		prev = s
	}
}

// TestObserveClockSequence: sequence numbers follow the clock, in
// milliseconds modulo 2^24, unless that is not fresher than the latest
// sent: then they count up from it.
func TestObserveClockSequence(t *testing.T) {
	at := func(ms int64) time.Time { return time.UnixMilli(ms) }
	for _, tt := range []struct {
		name string
		last uint32
		now  time.Time
		want uint32
	}{
		{"the clock", 100, at(5000), 5000},
		{"the clock modulo 2^24", 100, at(1<<24 + 5000), 5000},
		{"ahead of the clock", 6000, at(5000), 6001},
		{"the same millisecond", 5000, at(5000), 5001},
		{"the clock wrapped", 1<<24 - 10, at(1<<25 + 3), 3},
		{"ahead, wrapping", 1<<24 - 1, at(1<<24 - 5), 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := clockSeq(tt.last, tt.now); got != tt.want {
				t.Errorf("clockSeq(%d, %d ms) = %d, want %d", tt.last, tt.now.UnixMilli(), got, tt.want)
			}
		})
	}
	// A restart: the edge before sent seq at t0; one started 2 s later,
	// which knows nothing of seq, sends a fresher one.
	t0 := time.Now()
	seq := clockSeq(seqBefore(t0), t0)
	for range 50 {
		seq = clockSeq(seq, t0)
	}
	t1 := t0.Add(2 * time.Second)
	if after := clockSeq(seqBefore(t1), t1); !fresher(seq, after, 2*time.Second) {
		t.Fatalf("%d after a restart is not fresher than %d", after, seq)
	}
}

// registry is a Registry that records what it is told.
type registry struct {
	mu   sync.Mutex // guards held and ends
	held map[string]Registration
	ends int
}

func newRegistry() *registry { return &registry{held: map[string]Registration{}} }

func (r *registry) Register(reg Registration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[reg.Peer.String()+" "+string(reg.Token)] = reg
}

func (r *registry) Deregister(reg Registration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, reg.Peer.String()+" "+string(reg.Token))
	r.ends++
}

func (r *registry) list() []Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Registration
	for _, reg := range r.held {
		out = append(out, reg)
	}
	return out
}

// TestObserveRegistry: the Registry learns of each registration kept and
// ended; an edge started on the same socket with what it holds
// (Config.Restore) notifies the observers, the first time with a CON.
func TestObserveRegistry(t *testing.T) {
	reg := newRegistry()
	te := newTestEdge(t, Config{Registry: reg, BlockSize: 64})
	te.register(t, 1, 7, "sensors", "1")
	te.register(t, 2, 8, "sensors", "2")
	held := reg.list()
	if len(held) != 2 {
		t.Fatalf("the registry holds %d registrations, want 2", len(held))
	}
	for _, r := range held {
		if r.Peer != te.remote || r.Local != te.local || r.SZX != 2 || r.Registered.IsZero() || len(r.Token) != 1 {
			t.Fatalf("registration %+v", r)
		}
	}
	te.receive(observeGET(t, 3, 8, 1, "sensors", "2"))
	held = reg.list()
	if len(held) != 1 || held[0].Resource != "sensors.1" || held[0].Op != "GET /sensors/1" {
		t.Fatalf("after Observe 1: %+v", held)
	}
	seq := uint32(0)
	for range 2 {
		te.Notify("sensors.1", nil, []byte("before"))
		seq, _ = observeOf(decodeAnswer(t, te.answer(time.Second)))
	}

	// The same socket, a new edge: a restart with the socket handed over.
	// A restart takes longer than the milliseconds the sequence numbers
	// ran ahead of the clock (a few notifications in the same one).
	for !fresher(seq, uint32(time.Now().UnixMilli())&seqMask, 0) {
		runtime.Gosched()
	}
	reg2 := newRegistry()
	e2 := &Edge{Config: Config{Registry: reg2, Restore: held, MaxObserversPerPeer: 4}, Socket: te.Socket}
	e2.Start()
	t.Cleanup(e2.Close)
	if n := e2.Observers("sensors.1"); n != 1 {
		t.Fatalf("%d observers restored, want 1", n)
	}
	if st := e2.Stats().Observe; st.Restored != 1 || st.Observers != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got := reg2.list(); len(got) != 1 || !got[0].Registered.Equal(held[0].Registered) {
		t.Fatalf("the new edge's registry holds %+v", got)
	}
	if n, err := e2.Notify("sensors.1", nil, []byte("after")); n != 1 || err != nil {
		t.Fatalf("Notify: %d, %v", n, err)
	}
	m := decodeAnswer(t, te.answer(time.Second))
	s, ok := observeOf(m)
	if !ok || !fresher(seq, s, 0) || m.Type != typeCON || !bytes.Equal(m.Token, []byte{7}) || string(m.Payload) != "after" {
		t.Fatalf("notification after the restart: %v, Observe %d (%v) after %d, token %v, %q", m.Type, s, ok, seq, m.Token, m.Payload)
	}
	// The client's RST ends it, and the registry forgets it.
	e2.Receive(empty(typeRST, uint16(m.MessageID)), te.remote, te.local, 0, time.Now())
	if n := e2.Observers("sensors.1"); n != 0 || len(reg2.list()) != 0 {
		t.Fatalf("after RST: %d observers, registry %+v", n, reg2.list())
	}
}

// TestObserveRegistryMoved: a re-registration of a token on another
// resource replaces the registration in the registry too.
func TestObserveRegistryMoved(t *testing.T) {
	reg := newRegistry()
	te := newTestEdge(t, Config{Registry: reg})
	te.register(t, 1, 7, "a")
	te.register(t, 2, 7, "b")
	held := reg.list()
	if len(held) != 1 || held[0].Resource != "b" || reg.ends != 1 {
		t.Fatalf("the registry holds %+v after %d ends, want only the registration of b", held, reg.ends)
	}
	if te.Observers("a") != 0 || te.Observers("b") != 1 {
		t.Fatalf("observers of a %d, of b %d", te.Observers("a"), te.Observers("b"))
	}
}

// TestObserveRestoreBounds: a registration beyond MaxObserversPerPeer is
// not restored, and the registry forgets it.
func TestObserveRestoreBounds(t *testing.T) {
	peer := netip.MustParseAddrPort("127.0.0.1:40000")
	var regs []Registration
	for i := range 3 {
		regs = append(regs, Registration{Peer: peer, Token: []byte{byte(i)}, Resource: "r", Op: "GET /r", SZX: 6})
	}
	regs = append(regs, Registration{Peer: peer, Token: []byte{1}, Resource: "r"}) // held already
	reg := newRegistry()
	te := newTestEdge(t, Config{Registry: reg, Restore: regs, MaxObserversPerPeer: 2})
	if n := te.Observers("r"); n != 2 {
		t.Fatalf("%d observers restored, want 2", n)
	}
	if st := te.Stats().Observe; st.Restored != 2 || st.RefusedFull != 1 || reg.ends != 1 || len(reg.list()) != 2 {
		t.Fatalf("stats %+v, registry ends %d holds %d", st, reg.ends, len(reg.list()))
	}
}

func TestObserveBlockwise(t *testing.T) {
	te := newTestEdge(t, Config{BlockSize: 16})
	te.register(t, 1, 7, "big")
	body := bytes.Repeat([]byte("0123456789"), 5)
	te.Notify("big", map[string][]string{schemas.HeaderCoAPETag: {"0a0b"}}, body)
	m := decodeAnswer(t, te.answer(time.Second))
	v, err := m.Options.GetUint32(message.Block2)
	if _, ok := observeOf(m); !ok || err != nil || len(m.Payload) != 16 {
		t.Fatalf("first block: Observe %v, Block2 %v, %d bytes", ok, err, len(m.Payload))
	}
	if b, _ := parseBlock(v); b.num != 0 || !b.more || b.szx != 0 {
		t.Fatalf("Block2 %+v", b)
	}
	got := append([]byte(nil), m.Payload...)
	for num := uint32(1); ; num++ {
		b := block{num: num, szx: 0}
		r := te.receive(get(uint16(10+num), &b)) // GET /big with Block2
		if r != nil {
			t.Fatalf("block %d was published", num)
		}
		m := decodeAnswer(t, te.answer(time.Second))
		got = append(got, m.Payload...)
		v, _ := m.Options.GetUint32(message.Block2)
		if blk, _ := parseBlock(v); !blk.more {
			break
		}
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("reassembled %q", got)
	}
}

func TestObserveBounds(t *testing.T) {
	te := newTestEdge(t, Config{MaxObservers: 3, MaxObserversPerPeer: 2})
	te.register(t, 1, 1, "r")
	te.register(t, 2, 2, "r")
	if _, ok := observeOf(te.register(t, 3, 3, "r")); ok {
		t.Fatal("a third registration from one peer was kept")
	}
	// A re-registration with a token already registered is no new one.
	if _, ok := observeOf(te.register(t, 4, 2, "r")); !ok {
		t.Fatal("a re-registration was refused")
	}
	// Other peers: the listener holds three at most.
	for i, port := range []uint16{40001, 40002} {
		remote := netip.AddrPortFrom(te.remote.Addr(), port)
		r := te.Receive(observeGET(t, uint16(10+i), 1, 0, "r"), remote, te.local, 0, time.Now())
		r.Reply(schemas.StatusOK, accept, nil)
	}
	st := te.Stats().Observe
	if st.Observers != 3 || st.RefusedFull != 2 || te.Observers("r") != 3 {
		t.Fatalf("stats %+v, observers %d", st, te.Observers("r"))
	}
}

func TestObserveRegistrationValidates(t *testing.T) {
	te := guarded(t)
	te.ObserveCONEvery = 20
	if !te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("a new source is not limited")
	}
	te.register(t, 1, 7, "r")
	if te.Guard.Limited(te.remote.Addr(), time.Now()) {
		t.Fatal("a registered observer is still limited")
	}
	// It registered unvalidated: its first notification is a CON.
	te.Notify("r", nil, []byte("x"))
	if m := decodeAnswer(t, te.answer(time.Second)); m.Type != typeCON {
		t.Fatalf("first notification %v, want CON", m.Type)
	}
}

// FuzzObserve registers, notifies and deregisters with arbitrary
// datagrams: every request is accepted as a registration if it asks, and
// its resource notified. It must never panic, and the registrations stay
// within their bounds and indexed consistently.
func FuzzObserve(f *testing.F) {
	f.Add(observeGET(f, 1, 7, 0, "r"))
	f.Add(observeGET(f, 2, 7, 1, "r"))
	f.Add(observeGET(f, 3, 8, 0))
	f.Add(empty(typeRST, 3))
	f.Add(empty(typeACK, 3))
	const maxObs, perPeer = 8, 4
	te := newTestEdge(f, Config{MaxObservers: maxObs, MaxObserversPerPeer: perPeer, ObserveCONEvery: 2, ACKTimeout: time.Hour})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r := te.Receive(b, te.remote, te.local, 0, time.Now()); r != nil {
			r.Reply(schemas.StatusOK, accept, []byte("representation"))
			te.Notify(resourceOf(r.Segments), nil, []byte("notification"))
		}
		te.queued(t)
		te.mu.Lock()
		defer te.mu.Unlock()
		n := len(te.obs.observers)
		if n > maxObs || len(te.obs.byPeer[te.remote]) > perPeer || int(te.stats.observers.Load()) != n {
			t.Fatalf("%d observers, %d of the peer, gauge %d", n, len(te.obs.byPeer[te.remote]), te.stats.observers.Load())
		}
		indexed := 0
		for _, set := range te.obs.byResource {
			indexed += len(set)
		}
		if indexed != n {
			t.Fatalf("%d observers, %d indexed by resource", n, indexed)
		}
	})
}

// BenchmarkNotify measures one notification to 1,000 observers of a
// resource, each at an address of its own (NONs to loopback ports where
// nothing listens).
func BenchmarkNotify(b *testing.B) {
	te := newTestEdge(b, Config{ObserveCONEvery: 1 << 20})
	for i := range 1000 {
		remote := netip.AddrPortFrom(te.remote.Addr(), uint16(20000+i))
		r := te.Receive(observeGET(b, uint16(i), 1, 0, "r"), remote, te.local, 0, time.Now())
		r.Reply(schemas.StatusOK, accept, nil)
	}
	if n := te.Observers("r"); n != 1000 {
		b.Fatalf("%d observers", n)
	}
	h := map[string][]string{schemas.HeaderCoAPContentFormat: {"0"}}
	body := []byte("2026-11-23T00:00:00Z")
	b.ReportAllocs()
	for b.Loop() {
		if n, _ := te.Notify("r", h, body); n != 1000 {
			b.Fatalf("notified %d", n)
		}
	}
}
