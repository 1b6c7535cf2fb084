package exchange

import (
	"testing"
	"time"
)

type replier struct{}

func (replier) Reply(string, map[string][]string, []byte) error { return nil }
func (replier) Fail(Failure)                                    {}

// A raw exchange stays open through replies with more to follow, which it
// counts; the last reply closes it; one past the deadline is late.
func TestMore(t *testing.T) {
	tb := NewTable(4)
	a, _, _ := tb.Open(ex(t0.Add(time.Second)), t0)
	for i := range 3 {
		got, outcome, kept := tb.More(a, t0)
		if outcome != Answered || !kept || got.Replies != i || got.Sent != 10*i {
			t.Fatalf("reply %d: %v kept %v, sent %d in %d replies", i, outcome, kept, got.Sent, got.Replies)
		}
		tb.Charge(a, 10)
	}
	if tb.Len() != 1 {
		t.Fatalf("Len %d with more to follow, want 1", tb.Len())
	}
	got, outcome := tb.Close(a, t0)
	if outcome != Answered || got.Sent != 30 || got.Replies != 3 {
		t.Fatalf("last reply: %v, sent %d in %d replies", outcome, got.Sent, got.Replies)
	}
	if _, outcome, kept := tb.More(a, t0); outcome != Duplicate || kept {
		t.Errorf("more after the last: %v kept %v, want duplicate", outcome, kept)
	}
	tb.Charge(a, 10) // closed: nothing to charge

	b, _, _ := tb.Open(ex(t0.Add(time.Second)), t0)
	if _, outcome, kept := tb.More(b, t0.Add(time.Second)); outcome != Expired || kept {
		t.Errorf("more at the deadline: %v kept %v, want expired", outcome, kept)
	}
	if _, outcome, _ := tb.More(b, t0); outcome != Late {
		t.Errorf("more after the deadline: %v, want late", outcome)
	}

	// A protocol's exchange answers once: more closes it.
	e := ex(t0.Add(time.Second))
	e.Replier = replier{}
	c, _, _ := tb.Open(e, t0)
	if _, outcome, kept := tb.More(c, t0); outcome != Answered || kept {
		t.Errorf("more on a CoAP or RPC exchange: %v kept %v, want answered and closed", outcome, kept)
	}
	if tb.Len() != 0 {
		t.Errorf("Len %d, want 0", tb.Len())
	}
}
