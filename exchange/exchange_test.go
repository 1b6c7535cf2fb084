package exchange

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ex(deadline time.Time) Exchange {
	return Exchange{Remote: netip.MustParseAddrPort("127.0.0.1:5000"), Deadline: deadline}
}

func TestCloseOutcomes(t *testing.T) {
	tb := NewTable(4)
	a, _, ok := tb.Open(ex(t0.Add(time.Second)), t0)
	if !ok {
		t.Fatal("open failed")
	}
	b, _, _ := tb.Open(ex(t0.Add(time.Second)), t0)
	if tb.Len() != 2 {
		t.Fatalf("Len %d, want 2", tb.Len())
	}
	steps := []struct {
		name string
		seq  uint64
		at   time.Time
		want Outcome
	}{
		{"first reply", a, t0, Answered},
		{"second reply", a, t0, Duplicate},
		{"reply after the deadline, before the sweep", b, t0.Add(time.Second), Expired},
		{"again after the deadline", b, t0, Late},
		{"never issued", 99, t0, Unknown},
		{"zero", 0, t0, Unknown},
	}
	for _, s := range steps {
		if _, got := tb.Close(s.seq, s.at); got != s.want {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
	}
	if tb.Len() != 0 {
		t.Errorf("Len %d after closing all, want 0", tb.Len())
	}
}

func TestFullTableRefusesUntilDeadline(t *testing.T) {
	tb := NewTable(2)
	for range 2 {
		if _, _, ok := tb.Open(ex(t0.Add(time.Second)), t0); !ok {
			t.Fatal("open failed")
		}
	}
	if _, _, ok := tb.Open(ex(t0.Add(time.Second)), t0); ok {
		t.Fatal("third open in a table of 2 succeeded")
	}
	first := ex(t0.Add(time.Second))
	first.Conn = new(net.UDPConn)
	tb = NewTable(1)
	tb.Open(first, t0)
	seq, expired, ok := tb.Open(ex(t0.Add(3*time.Second)), t0.Add(time.Second))
	if !ok || expired.Conn != first.Conn {
		t.Fatalf("open after the oldest deadline: ok %v expired %v", ok, expired)
	}
	if _, got := tb.Close(1, t0); got != Unknown {
		t.Errorf("overwritten exchange: %v, want unknown", got)
	}
	if _, got := tb.Close(seq, t0.Add(time.Second)); got != Answered {
		t.Errorf("new exchange: %v, want answered", got)
	}
}

func TestAnsweredSlotsAreReused(t *testing.T) {
	tb := NewTable(2)
	for i := range 10 {
		seq, _, ok := tb.Open(ex(t0.Add(time.Hour)), t0)
		if !ok {
			t.Fatalf("open %d failed", i)
		}
		if _, got := tb.Close(seq, t0); got != Answered {
			t.Fatalf("close %d: %v", i, got)
		}
	}
}

func TestExpireAndRelease(t *testing.T) {
	tb := NewTable(8)
	early, _, _ := tb.Open(ex(t0.Add(time.Second)), t0)
	tb.Open(ex(t0.Add(time.Hour)), t0)
	rel, _, _ := tb.Open(ex(t0.Add(time.Second)), t0)
	if _, ok := tb.Release(rel); !ok {
		t.Fatal("release failed")
	}
	if _, ok := tb.Release(rel); ok {
		t.Fatal("second release succeeded")
	}
	var got []uint64
	if n := tb.Expire(t0.Add(time.Second), func(seq uint64, _ Exchange) { got = append(got, seq) }); n != 1 || len(got) != 1 || got[0] != early {
		t.Fatalf("expired %d %v, want just %d", n, got, early)
	}
	if _, o := tb.Close(early, t0); o != Late {
		t.Errorf("reply to an expired exchange: %v, want late", o)
	}
	if tb.Len() != 1 {
		t.Errorf("Len %d, want 1", tb.Len())
	}
}

func TestIDs(t *testing.T) {
	a, b := NewTable(0), NewTable(0)
	id := a.ID(0x1f)
	if seq, ok := a.ParseID(id); !ok || seq != 0x1f {
		t.Errorf("ParseID(%q) = %d, %v", id, seq, ok)
	}
	if _, ok := b.ParseID(id); ok {
		t.Errorf("another table accepted %q", id)
	}
	boot, _, _ := strings.Cut(id, "-")
	for _, bad := range []string{"", boot, boot + "-", boot + "-0", boot + "-xyz", boot + "-1F", boot + "-11111111111111111", "x" + id, id + " "} {
		if _, ok := a.ParseID(bad); ok {
			t.Errorf("ParseID accepted %q", bad)
		}
	}
}

func FuzzParseID(f *testing.F) {
	tb := NewTable(0)
	f.Add(tb.ID(1))
	f.Add(tb.ID(1 << 63))
	f.Add("")
	f.Add("abc-1")
	f.Fuzz(func(t *testing.T, id string) {
		seq, ok := tb.ParseID(id)
		if ok && tb.ID(seq) != id {
			t.Fatalf("ParseID(%q) = %d, which prints as %q", id, seq, tb.ID(seq))
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	tb := NewTable(1024)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				seq, _, ok := tb.Open(ex(t0.Add(time.Hour)), t0)
				if !ok {
					continue
				}
				if _, o := tb.Close(seq, t0); o != Answered {
					t.Errorf("close: %v", o)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			tb.Expire(t0, nil)
		}
	})
	wg.Wait()
	if tb.Len() != 0 {
		t.Errorf("Len %d, want 0", tb.Len())
	}
}

func BenchmarkOpenClose(b *testing.B) {
	tb := NewTable(0)
	e := ex(t0.Add(time.Hour))
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		seq, _, _ := tb.Open(e, t0)
		buf = tb.AppendID(buf[:0], seq)
		s, _ := tb.ParseID(string(buf))
		tb.Close(s, t0)
	}
}

// TestExpireMatchesScan runs random opens, closes, releases and sweeps on
// a small table, with deadlines that differ per exchange and sequence
// numbers that wrap the ring many times, and checks that Expire expires
// exactly the open exchanges past their deadline, as a scan of every open
// exchange would.
func TestExpireMatchesScan(t *testing.T) {
	tb := NewTable(16)
	open := map[uint64]time.Time{} // seq -> deadline, the exchanges open
	now := t0
	rnd := uint64(1)
	next := func(n uint64) uint64 { // xorshift, so that the test repeats
		rnd ^= rnd << 13
		rnd ^= rnd >> 7
		rnd ^= rnd << 17
		return rnd % n
	}
	for step := range 20000 {
		switch op := next(10); {
		case op < 5:
			deadline := now.Add(time.Duration(1+next(50)) * time.Millisecond)
			seq, expired, ok := tb.Open(ex(deadline), now)
			if expired.Conn == nil && !ok {
				continue
			}
			if ok {
				open[seq] = deadline
			}
			for s, d := range open { // Open took over an expired slot
				if s != seq && s&15 == seq&15 {
					if now.Before(d) {
						t.Fatalf("step %d: Open %d took the slot of %d, open until %v", step, seq, s, d)
					}
					delete(open, s)
				}
			}
		case op < 7:
			for s := range open {
				if _, ok := tb.Release(s); !ok {
					t.Fatalf("step %d: Release(%d) of an open exchange failed", step, s)
				}
				delete(open, s)
				break
			}
		case op < 9:
			now = now.Add(time.Duration(next(5)) * time.Millisecond)
		default:
			want := map[uint64]bool{}
			for s, d := range open {
				if !now.Before(d) {
					want[s] = true
				}
			}
			got := map[uint64]bool{}
			n := tb.Expire(now, func(seq uint64, _ Exchange) { got[seq] = true })
			if n != len(want) || len(got) != len(want) {
				t.Fatalf("step %d: Expire = %d (%v), want %v", step, n, got, want)
			}
			for s := range want {
				if !got[s] {
					t.Fatalf("step %d: Expire missed %d: got %v, want %v", step, s, got, want)
				}
				delete(open, s)
			}
		}
		if tb.Len() != len(open) {
			t.Fatalf("step %d: Len = %d, want %d", step, tb.Len(), len(open))
		}
	}
}

// BenchmarkExpire measures one sweep of a default-size table holding 64
// open exchanges not yet due, as egress sweeps it ten times a second
// under a light load.
func BenchmarkExpire(b *testing.B) {
	tb := NewTable(0)
	for range 64 {
		tb.Open(ex(t0.Add(time.Hour)), t0)
	}
	b.ReportAllocs()
	for b.Loop() {
		tb.Expire(t0, nil)
	}
}
