package coap

import (
	"hash/maphash"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"

	"github.com/udpgate/udpgate/exchange"
)

// cached is what the dedupe cache knows of one received message.
type cached struct {
	key      peerMID
	seq      uint64 // numbers the entry: its slot is reused after it is dropped
	sum      uint64 // hash of the datagram: only identical copies are duplicates
	expires  time.Time
	response []byte   // resent to a duplicate; nil while none
	separate bool     // an empty ACK was sent; the response comes as a CON
	started  *Request // the CON request, once started and until answered
}

// hashSeed keys the hashes of the dedupe cache.
var hashSeed = maphash.MakeSeed()

// deduplicate looks up message b, with header h, from dst.Remote in the
// dedupe cache. It remembers a new message and returns its entry. It
// answers a duplicate from the cache (with the response, or an empty ACK
// once the response is to come separately) and hands its request, if
// started and still unanswered, to Retransmitted; it drops a message that
// reuses a message id with other bytes. For those, and after Close, it
// returns nil.
func (e *Edge) deduplicate(b []byte, h header, dst exchange.Exchange, now time.Time) *cached {
	key := peerMID{dst.Remote, h.mid}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	sum := maphash.Bytes(hashSeed, b)
	c, ok := e.dedupe[key]
	if !ok || !now.Before(c.expires) {
		c = e.remember(key, h.typ, now)
		c.sum = sum
		e.mu.Unlock()
		return c
	}
	if c.sum != sum {
		// Same message id, other content: not a retransmission. It is
		// dropped, so that no one can fetch a cached response larger
		// than what they send.
		e.mu.Unlock()
		e.stats.malformed.Add(1)
		return nil
	}
	e.stats.duplicates.Add(1)
	var again []byte
	switch {
	case c.response != nil:
		again = c.response
	case c.separate:
		again = empty(typeACK, h.mid)
	}
	var retry *Request
	if c.response == nil && c.started != nil && !c.started.done {
		retry = c.started
	}
	e.mu.Unlock()
	if again != nil {
		e.send(dst, again)
	}
	if retry != nil && e.Retransmitted != nil {
		e.stats.retransmitted.Add(1)
		e.Retransmitted(retry)
	}
	return nil
}

// remember records a new received message in the dedupe cache, dropping
// the oldest entry if the cache is full. e.mu must be held.
func (e *Edge) remember(key peerMID, typ message.Type, now time.Time) *cached {
	life := exchangeLifetime
	if typ == typeNON {
		life = nonLifetime
	}
	if e.recentLen >= e.CacheSize {
		if c := e.slot(e.recentHead); e.dedupe[c.key] == c {
			e.stats.evicted.Add(1)
		}
		e.forgetOldest()
	}
	i := (e.recentHead + e.recentLen) % e.CacheSize
	for i/cacheChunk >= len(e.recent) {
		// The ring fills its slots in order before it wraps.
		e.recent = append(e.recent, make([]cached, min(cacheChunk, e.CacheSize-len(e.recent)*cacheChunk)))
	}
	e.recentLen++
	e.recentSeq++
	c := e.slot(i)
	*c = cached{key: key, seq: e.recentSeq, expires: now.Add(life)}
	e.dedupe[key] = c
	return c
}

// cacheChunk is how many dedupe cache entries are allocated at a time.
const cacheChunk = 1024

// slot returns entry i of the dedupe cache's ring. e.mu must be held.
func (e *Edge) slot(i int) *cached { return &e.recent[i/cacheChunk][i%cacheChunk] }

// forgetOldest drops the oldest entry of the dedupe cache, and its key
// unless a newer message with the same key took it. e.mu must be held.
func (e *Edge) forgetOldest() {
	c := e.slot(e.recentHead)
	if e.dedupe[c.key] == c {
		delete(e.dedupe, c.key)
	}
	*c = cached{}
	e.recentHead = (e.recentHead + 1) % e.CacheSize
	e.recentLen--
}

// cached returns r's dedupe cache entry, or nil if it was dropped. e.mu
// must be held.
func (r *Request) cached() *cached {
	if r.cache.seq != r.cacheSeq {
		return nil
	}
	return r.cache
}
