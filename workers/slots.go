package workers

import (
	"sync"
)

// slots counts the handler slots of one Serve call. A slot is free, or
// reserved by a fetch for a request that has not arrived, or busy with a
// request from its arrival until its handler is done. It is safe for
// concurrent use.
type slots struct {
	refill int           // the free slots that start a fetch while another is outstanding
	freed  chan struct{} // holds a value after free grows
	mu     sync.Mutex    // guards free and reserved
	free   int
	// reserved counts the requests that outstanding fetches may still
	// bring.
	reserved int
}

func newSlots(n int) *slots {
	return &slots{refill: (n + 1) / 2, freed: make(chan struct{}, 1), free: n}
}

// reserve reserves the free slots for a fetch and returns how many. It
// returns 0, reserving none, if no slot is free, or if a fetch is
// outstanding and fewer than half the slots are free: pulling one request
// at a time would cost a pull request each.
func (s *slots) reserve() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.free == 0 || s.reserved > 0 && s.free < s.refill {
		return 0
	}
	n := s.free
	s.free = 0
	s.reserved += n
	return n
}

// start makes a reserved slot busy: its request has arrived. When that was
// the last request outstanding fetches could bring, free slots that were
// too few to pull for while a fetch was outstanding may now be pulled for.
func (s *slots) start() {
	s.mu.Lock()
	s.reserved--
	s.signalIfReady()
	s.mu.Unlock()
}

// release frees n busy slots.
func (s *slots) release(n int) {
	s.mu.Lock()
	s.free += n
	s.signalIfReady()
	s.mu.Unlock()
}

// unreserve frees n reserved slots, whose requests will not arrive.
func (s *slots) unreserve(n int) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.reserved -= n
	s.free += n
	s.signalIfReady()
	s.mu.Unlock()
}

// signalIfReady wakes the fetch loop if reserve would now reserve slots,
// and only then: a wake-up that finds nothing to do costs a context
// switch per request. s.mu must be held.
func (s *slots) signalIfReady() {
	if s.free == 0 || s.reserved > 0 && s.free < s.refill {
		return
	}
	select {
	case s.freed <- struct{}{}:
	default:
	}
}
