package coap

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/schemas"
)

func TestMessageIDsNotReused(t *testing.T) {
	e := &Edge{}
	e.Start()
	peer := netip.MustParseAddrPort("127.0.0.1:5683")
	now := time.Now()
	seen := map[uint16]bool{}
	for {
		mid, ok := e.newMID(peer, now)
		if !ok {
			break
		}
		if seen[mid] {
			t.Fatalf("id %d reused within EXCHANGE_LIFETIME", mid)
		}
		seen[mid] = true
	}
	if n := len(seen); n < 1<<16-1<<midBlockBits {
		t.Errorf("%d ids within EXCHANGE_LIFETIME, want at least %d", n, 1<<16-1<<midBlockBits)
	}
	if _, ok := e.newMID(peer, now.Add(exchangeLifetime-time.Millisecond)); ok {
		t.Error("an id reused just within EXCHANGE_LIFETIME")
	}
	if _, ok := e.newMID(peer, now.Add(exchangeLifetime)); !ok {
		t.Error("no id after EXCHANGE_LIFETIME")
	}
}

// TestMessageIDsNotReusedAtAnyPace issues ids at random paces, from a
// burst to a trickle, and checks each against the last time it was issued.
func TestMessageIDsNotReusedAtAnyPace(t *testing.T) {
	e := &Edge{}
	e.Start()
	peer := netip.MustParseAddrPort("127.0.0.1:5683")
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	last := map[uint16]time.Time{}
	var issued, refused int
	for range 600_000 {
		// Mostly bursts, sometimes a pause of up to a minute.
		if rng.IntN(50_000) == 0 {
			now = now.Add(time.Duration(rng.Int64N(int64(time.Minute))))
		} else {
			now = now.Add(time.Duration(rng.Int64N(int64(2 * time.Millisecond))))
		}
		mid, ok := e.newMID(peer, now)
		if !ok {
			refused++
			continue
		}
		if at, ok := last[mid]; ok && now.Sub(at) < exchangeLifetime {
			t.Fatalf("id %d issued again %s after its last issue", mid, now.Sub(at))
		}
		last[mid] = now
		issued++
	}
	if issued == 0 || refused == 0 {
		t.Errorf("issued %d, refused %d: the pace never reached the limit", issued, refused)
	}
}

// TestPiggybackWindows: requests answered within the window get the
// response in the ACK and nothing else; the others get an empty ACK no
// sooner than the window ends, then their response as a separate CON.
// More requests than the ring's first size are in flight at once.
func TestPiggybackWindows(t *testing.T) {
	const window = 100 * time.Millisecond
	te := newTestEdge(t, Config{Piggyback: window})
	const n = 150
	reqs := make([]*Request, n)
	started := time.Now()
	for i := range n {
		r := te.receive(get(uint16(i), nil))
		if r == nil {
			t.Fatalf("request %d not published", i)
		}
		r.Started()
		reqs[i] = r
	}
	for i := 0; i < n; i += 2 {
		reqs[i].Reply(schemas.StatusOK, nil, []byte("now"))
	}
	piggybacked, emptyACKs := 0, 0
	for piggybacked+emptyACKs < n {
		a := te.answer(10 * time.Second)
		m := decodeAnswer(t, a)
		switch {
		case m.Type == typeACK && m.Code == codes.Content:
			if m.MessageID%2 != 0 || string(m.Payload) != "now" {
				t.Fatalf("piggybacked %d %q", m.MessageID, m.Payload)
			}
			piggybacked++
		case m.Type == typeACK && m.Code == codes.Empty:
			if m.MessageID%2 != 1 {
				t.Fatalf("empty ACK for answered request %d", m.MessageID)
			}
			if d := time.Since(started); d < window {
				t.Fatalf("empty ACK after %v, before the window of %v ended", d, window)
			}
			emptyACKs++
		default:
			t.Fatalf("answer %v %v", m.Type, m.Code)
		}
	}
	if a := te.answer(2 * window); a != nil {
		t.Fatalf("more answers: % x", a)
	}
	reqs[1].Reply(schemas.StatusOK, nil, []byte("later"))
	m := decodeAnswer(t, te.answer(10*time.Second))
	if m.Type != typeCON || string(m.Payload) != "later" {
		t.Fatalf("separate response %v %q", m.Type, m.Payload)
	}
	s := te.Stats()
	if s.Piggybacked != n/2 || s.Separate != 1 {
		t.Errorf("stats %+v", s)
	}
	// A duplicate of an acknowledged request gets the empty ACK again.
	te.receive(get(3, nil))
	if a := te.answer(10 * time.Second); !bytes.Equal(a, []byte{0x60, 0, 0, 3}) {
		t.Errorf("duplicate answered % x", a)
	}
}

func TestCloseStopsWindows(t *testing.T) {
	te := newTestEdge(t, Config{Piggyback: 10 * time.Millisecond})
	r := te.receive(get(1, nil))
	r.Started()
	te.Close()
	if a := te.answer(100 * time.Millisecond); a != nil {
		t.Errorf("answered % x after Close", a)
	}
}

// A retransmission of a CON request that was started and is unanswered is
// handed to Retransmitted, once per retransmission; once answered, a
// retransmission gets the cached response and is not handed on; a NON is
// never handed on.
func TestRetransmitted(t *testing.T) {
	te := newTestEdge(t, Config{Piggyback: time.Minute})
	var got []*Request
	te.Retransmitted = func(r *Request) { got = append(got, r) }
	con := []byte{0x41, 0x01, 0x00, 0x07, 0xaa, 0xb4, 't', 'i', 'm', 'e'} // CON GET /time, token aa
	r := te.receive(con)
	if r == nil {
		t.Fatal("not published")
	}
	if te.receive(con) != nil || len(got) != 0 {
		t.Fatalf("a retransmission before Started: %d handed on", len(got))
	}
	r.Started()
	for i := range 2 {
		if te.receive(con) != nil {
			t.Fatal("a retransmission was returned as a new request")
		}
		if len(got) != i+1 || got[i] != r {
			t.Fatalf("after %d retransmissions, %d handed on", i+1, len(got))
		}
	}
	if a := te.answer(50 * time.Millisecond); a != nil {
		t.Errorf("an unanswered retransmission got % x", a)
	}
	if err := r.Reply("ok", nil, []byte("12:00")); err != nil {
		t.Fatal(err)
	}
	first := te.answer(time.Second)
	te.receive(con)
	if again := te.answer(time.Second); !bytes.Equal(again, first) || len(got) != 2 {
		t.Errorf("after the answer: % x (want % x), %d handed on", again, first, len(got))
	}
	non := []byte{0x51, 0x01, 0x00, 0x08, 0xbb, 0xb4, 't', 'i', 'm', 'e'}
	rn := te.receive(non)
	rn.Started()
	te.receive(non)
	if len(got) != 2 {
		t.Errorf("a NON retransmission was handed on")
	}
	if n := te.Stats().Retransmitted; n != 2 {
		t.Errorf("Stats.Retransmitted = %d, want 2", n)
	}
}
