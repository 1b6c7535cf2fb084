package workers

import "testing"

// TestSlotsSignal: the fetch loop is woken exactly when reserve would
// reserve something, including when the last request of a fetch arrives
// while fewer than half the slots are free (they could not be pulled for
// while that fetch was outstanding).
func TestSlotsSignal(t *testing.T) {
	s := newSlots(4) // refill 2
	woken := func() bool {
		select {
		case <-s.freed:
			return true
		default:
			return false
		}
	}
	if n := s.reserve(); n != 4 {
		t.Fatalf("reserve = %d, want 4", n)
	}
	s.start() // 1 of 4 arrived
	s.release(1)
	if woken() || s.reserve() != 0 {
		t.Fatal("woken for 1 free slot while a fetch for 3 is outstanding")
	}
	s.start()
	s.start()
	if woken() {
		t.Fatal("woken while a request is still outstanding")
	}
	s.start() // the fetch is complete: the free slot can be pulled for
	if !woken() {
		t.Fatal("not woken when the last outstanding request arrived with a slot free")
	}
	if n := s.reserve(); n != 1 {
		t.Errorf("reserve = %d, want 1", n)
	}
	s.unreserve(1)
	if !woken() {
		t.Error("not woken by a fetch that brought nothing")
	}
}
