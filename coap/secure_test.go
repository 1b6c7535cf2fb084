package coap

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// recorder is a session that keeps what is written to it.
type recorder struct {
	mu  sync.Mutex // guards got
	got [][]byte
}

func (r *recorder) Write(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, bytes.Clone(b))
	return nil
}

// TestSecureEdge: a coaps listener's edge answers through the session a
// datagram came in, never on the socket, and sends nothing for a
// datagram without a session.
func TestSecureEdge(t *testing.T) {
	te := newTestEdge(t, Config{})
	te.Secure = true
	var s recorder
	te.ReceiveSession(unhex(t, "40 00 12 34"), te.remote, te.local, 0, &s, time.Now()) // a ping
	s.mu.Lock()
	if want := unhex(t, "70 00 12 34"); len(s.got) != 1 || !bytes.Equal(s.got[0], want) {
		t.Errorf("the session got %x, want the RST %x", s.got, want)
	}
	s.mu.Unlock()
	if b := te.answer(100 * time.Millisecond); b != nil {
		t.Errorf("the socket sent %x", b)
	}
	te.receive(unhex(t, "40 00 12 35")) // no session
	if b := te.answer(100 * time.Millisecond); b != nil {
		t.Errorf("the socket sent %x for a datagram without a session", b)
	}
	if n := te.Stats().SendErrors; n != 1 {
		t.Errorf("%d send errors, want 1", n)
	}
}
