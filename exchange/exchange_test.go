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
	a, _, err := tb.Open(ex(t0.Add(time.Second)), t0)
	if err != nil {
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
		if _, _, err := tb.Open(ex(t0.Add(time.Second)), t0); err != nil {
			t.Fatal("open failed")
		}
	}
	if _, _, err := tb.Open(ex(t0.Add(time.Second)), t0); err != ErrFull {
		t.Fatalf("third open in a table of 2: %v, want %v", err, ErrFull)
	}
	first := ex(t0.Add(time.Second))
	first.Conn = new(net.UDPConn)
	tb = NewTable(1)
	tb.Open(first, t0)
	seq, expired, err := tb.Open(ex(t0.Add(3*time.Second)), t0.Add(time.Second))
	if err != nil || expired.Conn != first.Conn {
		t.Fatalf("open after the oldest deadline: %v, expired %v", err, expired)
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
		seq, _, err := tb.Open(ex(t0.Add(time.Hour)), t0)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
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
				seq, _, err := tb.Open(ex(t0.Add(time.Hour)), t0)
				if err != nil {
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
	e.Share = &Share{Max: DefaultSize / 2}
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
			seq, expired, err := tb.Open(ex(deadline), now)
			if expired.Conn == nil && err != nil {
				continue
			}
			if err == nil {
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

// TestShareMatchesModel runs random opens on three shares (and none),
// replies before and after the deadline, releases, sweeps and opens that
// take over an expired slot, on a small table whose sequence numbers wrap
// the ring many times. After every step each share counts exactly the open
// exchanges holding it, as a model of the table says, and every Open is
// refused, or not, as the model predicts.
func TestShareMatchesModel(t *testing.T) {
	const size = 16
	tb := NewTable(size)
	shares := []*Share{{Max: 3}, {Max: 5}, {}, nil}
	type entry struct {
		deadline time.Time
		share    *Share
	}
	open := map[uint64]entry{} // the exchanges open, by seq
	var last uint64            // the last sequence number handed out
	now := t0
	rnd := uint64(7)
	next := func(n uint64) uint64 { // xorshift, so that the test repeats
		rnd ^= rnd << 13
		rnd ^= rnd >> 7
		rnd ^= rnd << 17
		return rnd % n
	}
	anyOpen := func() (uint64, bool) {
		for s := range open {
			return s, true
		}
		return 0, false
	}
	held := func(sh *Share) int {
		n := 0
		for _, e := range open {
			if e.share == sh {
				n++
			}
		}
		return n
	}
	refusals := map[error]int{}
	for step := range 50000 {
		switch op := next(16); {
		case op < 7:
			sh := shares[next(uint64(len(shares)))]
			e := ex(now.Add(time.Duration(1+next(40)) * time.Millisecond))
			e.Share = sh
			want := error(nil)
			taken, inSlot := open[last+1-size]
			due := inSlot && !now.Before(taken.deadline)
			switch {
			case sh != nil && sh.Max > 0 && held(sh) >= sh.Max && !(due && taken.share == sh):
				want = ErrShareFull
			case inSlot && !due:
				want = ErrFull
			}
			seq, expired, err := tb.Open(e, now)
			if err != want {
				t.Fatalf("step %d: Open: %v, want %v", step, err, want)
			}
			if err != nil {
				refusals[err]++
				break
			}
			if expired.Deadline.IsZero() == inSlot {
				t.Fatalf("step %d: Open returned expired %v; the model had %v in the slot", step, expired, inSlot)
			}
			delete(open, last+1-size)
			last = seq
			open[seq] = entry{e.Deadline, sh}
		case op < 10:
			s, ok := anyOpen()
			if !ok {
				break
			}
			want := Answered
			if !now.Before(open[s].deadline) {
				want = Expired
			}
			if _, got := tb.Close(s, now); got != want {
				t.Fatalf("step %d: Close(%d): %v, want %v", step, s, got, want)
			}
			delete(open, s)
			if _, got := tb.Close(s, now); got == Answered || got == Expired {
				t.Fatalf("step %d: second Close(%d): %v", step, s, got)
			}
		case op < 12:
			s, ok := anyOpen()
			if !ok {
				break
			}
			if _, ok := tb.Release(s); !ok {
				t.Fatalf("step %d: Release(%d) of an open exchange failed", step, s)
			}
			delete(open, s)
		case op < 15:
			now = now.Add(time.Duration(next(4)) * time.Millisecond)
		default:
			tb.Expire(now, nil)
			for s, e := range open {
				if !now.Before(e.deadline) {
					delete(open, s)
				}
			}
		}
		for i, sh := range shares[:3] {
			if got, want := sh.Len(), held(sh); got != want {
				t.Fatalf("step %d: share %d holds %d, want %d", step, i, got, want)
			}
			if sh.Max > 0 && sh.Len() > sh.Max {
				t.Fatalf("step %d: share %d holds %d, over its Max %d", step, i, sh.Len(), sh.Max)
			}
		}
		if tb.Len() != len(open) {
			t.Fatalf("step %d: Len = %d, want %d", step, tb.Len(), len(open))
		}
	}
	if refusals[ErrShareFull] == 0 || refusals[ErrFull] == 0 {
		t.Errorf("the run never reached a limit: refusals %v", refusals)
	}
}

func TestShareLimitsOneListener(t *testing.T) {
	tb := NewTable(8)
	a, b := &Share{Max: 4}, &Share{Max: 4}
	open := func(sh *Share, deadline time.Time, now time.Time) (uint64, error) {
		e := ex(deadline)
		e.Share = sh
		seq, _, err := tb.Open(e, now)
		return seq, err
	}
	var first uint64
	for i := range 4 {
		seq, err := open(a, t0.Add(time.Second), t0)
		if err != nil {
			t.Fatalf("open %d of a: %v", i, err)
		}
		if i == 0 {
			first = seq
		}
	}
	if _, err := open(a, t0.Add(time.Second), t0); err != ErrShareFull {
		t.Fatalf("fifth open of a: %v, want %v", err, ErrShareFull)
	}
	for i := range 4 {
		if _, err := open(b, t0.Add(time.Second), t0); err != nil {
			t.Fatalf("open %d of b, with a at its share: %v", i, err)
		}
	}
	if _, err := open(b, t0.Add(time.Second), t0); err != ErrShareFull {
		t.Fatalf("fifth open of b: %v, want %v", err, ErrShareFull)
	}
	if _, o := tb.Close(first, t0); o != Answered {
		t.Fatalf("close: %v", o)
	}
	if a.Len() != 3 {
		t.Fatalf("a holds %d after a reply, want 3", a.Len())
	}
	// The table's slots are all taken or not yet reached: the next slot
	// in sequence is a's answered first, so a may open again.
	if _, err := open(a, t0.Add(time.Second), t0); err != nil {
		t.Fatalf("open of a after a reply: %v", err)
	}
	if n := tb.Expire(t0.Add(time.Second), nil); n != 8 || a.Len() != 0 || b.Len() != 0 {
		t.Fatalf("after the deadline: %d expired, a holds %d, b %d; want 8, 0, 0", n, a.Len(), b.Len())
	}
}
