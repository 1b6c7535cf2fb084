package bridge

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpgate/udpgate/guard"
)

// binding is one lease: a raw listener of the gateway and its readers.
type binding struct {
	id      string
	kind    string
	stats   *kindStats // of its kind, in the Bridge
	conn    *net.UDPConn
	local   netip.AddrPort // the bound address
	name    string         // the listener's, PORT/raw
	created time.Time
	lease   time.Duration
	rate    *guard.Guard // the send rate; nil: no limit

	heartbeat      atomic.Int64 // Unix ns of the last heartbeat (or creation)
	received, sent atomic.Uint64

	buffer, maxReaders int
	drops              *atomic.Uint64 // the Bridge's: datagrams readers had no room for

	mu      sync.Mutex // guards readers, peers and reason
	readers map[*reader]struct{}
	peers   map[netip.AddrPort]struct{} // addresses that sent to it, at most maxPeers
	reason  string                      // why it closed: deleted, expired, stopped; "" while open
	done    chan struct{}               // closed when it closes
}

// datagram is one datagram for the readers. data is the ingress's copy,
// shared by every reader and the publication: read only.
type datagram struct {
	src  netip.AddrPort
	at   time.Time
	data []byte
}

// reader is one SSE stream of a binding.
type reader struct {
	c chan datagram
}

// expired reports whether the lease ran out at now.
func (bd *binding) expired(now time.Time) bool {
	return now.UnixNano()-bd.heartbeat.Load() > int64(bd.lease)
}

// tap is the listener's Tap: it runs on the read loop, so it never
// waits; a reader without room loses the datagram (counted).
func (bd *binding) tap(remote, _ netip.AddrPort, at time.Time, data []byte) {
	bd.received.Add(1)
	bd.stats.inPackets.Add(1)
	bd.stats.inBytes.Add(uint64(len(data)))
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if _, ok := bd.peers[remote]; !ok {
		if len(bd.peers) >= maxPeers {
			for p := range bd.peers { // forget any one
				delete(bd.peers, p)
				break
			}
		}
		bd.peers[remote] = struct{}{}
	}
	d := datagram{remote, at, data}
	for r := range bd.readers {
		select {
		case r.c <- d:
		default:
			bd.drops.Add(1)
		}
	}
}

// sentFrom reports whether a datagram came from addr.
func (bd *binding) sentFrom(addr netip.AddrPort) bool {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	_, ok := bd.peers[addr]
	return ok
}

// addReader adds an SSE reader; nil if the binding has its most, or is
// closed.
func (bd *binding) addReader() *reader {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	max := cmp.Or(bd.maxReaders, DefaultMaxReaders)
	if bd.reason != "" || len(bd.readers) >= max {
		return nil
	}
	r := &reader{c: make(chan datagram, cmp.Or(bd.buffer, DefaultBuffer))}
	bd.readers[r] = struct{}{}
	return r
}

func (bd *binding) removeReader(r *reader) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	delete(bd.readers, r)
}

func (bd *binding) readerCount() int {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	return len(bd.readers)
}

// shut marks bd closed for reason; its readers' streams end.
func (bd *binding) shut(reason string) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if bd.reason == "" {
		bd.reason = reason
		close(bd.done)
	}
}

// closedBecause returns why bd closed, once done is closed.
func (bd *binding) closedBecause() string {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	return bd.reason
}

// sortInfos orders a status: oldest first, then by id.
func sortInfos(in []Info) {
	slices.SortFunc(in, func(a, b Info) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
}
