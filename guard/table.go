package guard

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// ways is the associativity of the source table: a source prefix lives in
// one of the ways of the set its keyed hash picks.
const ways = 4

// table is the fixed-size table of per-source token buckets: a hashed
// array of sets of ways entries, each a GCRA bucket (one theoretical
// arrival time). The hash is keyed with a random seed, so an attacker
// cannot aim spoofed sources at the set of a source it wants to evict.
//
// A new source takes an empty way, else the way whose bucket is fullest
// (earliest arrival time): an idle bucket is as good as a fresh one, so
// evicting it loses nothing, and a busy source is evicted only when every
// way of its set is busier. An evicted source starts again with a full
// bucket; that is the price of fixed memory.
type table struct {
	sets      []set
	mask      uint64
	seed      maphash.Seed
	t, tau    int64        // GCRA emission interval and tolerance, ns
	used      atomic.Int64 // entries in use
	evictions atomic.Uint64
}

type set struct {
	mu sync.Mutex // guards e
	e  [ways]entry
}

type entry struct {
	key [2]uint64
	tat int64 // theoretical arrival time, ns on the guard's clock; 0: empty
}

func newTable(size int, rate float64, burst int) *table {
	n := 1
	for n*ways < size {
		n <<= 1
	}
	t, tau := bucket(rate, burst)
	return &table{sets: make([]set, n), mask: uint64(n - 1), seed: maphash.MakeSeed(), t: t, tau: tau}
}

// take takes a token from key's bucket at now. It returns 0, or how long
// until a token is available.
func (tb *table) take(key [2]uint64, now int64) int64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], key[0])
	binary.LittleEndian.PutUint64(b[8:], key[1])
	s := &tb.sets[maphash.Bytes(tb.seed, b[:])&tb.mask]
	s.mu.Lock()
	defer s.mu.Unlock()
	victim := -1
	for i := range s.e {
		e := &s.e[i]
		if e.tat != 0 && e.key == key {
			return tb.gcra(e, now)
		}
		if victim < 0 || e.tat < s.e[victim].tat {
			victim = i
		}
	}
	e := &s.e[victim]
	if e.tat == 0 {
		tb.used.Add(1)
	} else {
		tb.evictions.Add(1)
	}
	*e = entry{key: key, tat: now}
	return tb.gcra(e, now)
}

// gcra is the generic cell rate algorithm: a token bucket kept as one
// time.
func (tb *table) gcra(e *entry, now int64) int64 {
	tat := max(e.tat, now)
	if tat-now > tb.tau {
		return tat - tb.tau - now
	}
	e.tat = tat + tb.t
	return 0
}
