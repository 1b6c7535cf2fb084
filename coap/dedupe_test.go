package coap

import (
	"bytes"
	"testing"
	"time"
)

func TestDuplicateMustBeIdentical(t *testing.T) {
	te := newTestEdge(t, Config{})
	big := []byte{0x48, 0x08, 0x00, 0x09, 1, 2, 3, 4, 5, 6, 7, 8} // unknown method, 8-byte token
	te.receive(big)
	first := te.answer(time.Second)
	if len(first) != 12 {
		t.Fatalf("answer % x, want a 4.05 with the token", first)
	}
	te.receive(big)
	if again := te.answer(time.Second); !bytes.Equal(again, first) {
		t.Errorf("retransmission answered % x, want % x", again, first)
	}
	te.receive([]byte{0x40, 0x08, 0x00, 0x09}) // same id, other bytes
	if a := te.answer(50 * time.Millisecond); a != nil {
		t.Errorf("a different message with the same id got % x", a)
	}
}

func TestDedupeCacheEvicts(t *testing.T) {
	te := newTestEdge(t, Config{CacheSize: 1500}) // two chunks, the last partial
	for i := range 4000 {
		if r := te.receive(get(uint16(i), nil)); r == nil {
			t.Fatalf("request %d not published", i)
		} else {
			r.done = true
		}
	}
	if s := te.Stats(); s.Evicted != 4000-1500 {
		t.Errorf("evicted %d", s.Evicted)
	}
	// The newest are remembered, the oldest forgotten.
	if r := te.receive(get(3999, nil)); r != nil {
		t.Error("a recent duplicate was published")
	}
	if r := te.receive(get(0, nil)); r == nil {
		t.Error("an evicted message id was not published again")
	}
	te.Sweep(time.Now().Add(exchangeLifetime + time.Second))
	te.mu.Lock()
	defer te.mu.Unlock()
	if len(te.dedupe) != 0 || te.recentLen != 0 {
		t.Errorf("after Sweep: %d keys, %d entries", len(te.dedupe), te.recentLen)
	}
}
