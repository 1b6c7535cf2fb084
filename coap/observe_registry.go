package coap

import (
	"net/netip"
	"time"
)

// Registration is one Observe registration as a Registry keeps it: what
// an edge on the same address needs to restore its observer (see
// Config.Restore).
type Registration struct {
	Peer  netip.AddrPort // the client
	Token []byte
	// Resource is the notify subject's path tokens, joined by "." (see
	// Edge.Observers).
	Resource string
	// Op is the registration's request line: the Block2 follow-ups of a
	// notification ask for it.
	Op string
	// Local is the address the client sent the registration to, IfIndex
	// the interface it arrived on (0 if unknown): notifications leave
	// from there.
	Local   netip.AddrPort
	IfIndex int
	Port    uint16 // the listener's
	SZX     uint8  // the block size exponent of its notifications
	// Registered is when the client registered (its latest registration
	// with the token).
	Registered time.Time
}

// Registry keeps an edge's Observe registrations beyond its process, so
// that an edge restarted on the same address goes on notifying the
// observers (Config.Restore). The edge calls it with its lock held, on
// the read loop among others: its methods must not block, and must not
// call the edge. They keep nothing of the Registration they are given
// that its caller could change: the edge gives each call its own.
type Registry interface {
	// Register is called for each registration kept (a re-registration
	// included) and each one restored.
	Register(r Registration)
	// Deregister is called for each registration that ends, and each one
	// Config.Restore held that the edge could not restore.
	Deregister(r Registration)
}

// registration returns o as a Registry keeps it, registered at at.
// e.mu must be held.
func (o *observer) registration(at time.Time) Registration {
	return Registration{
		Peer: o.key.peer, Token: []byte(o.key.token), Resource: o.resource, Op: o.op,
		Local: o.dst.Local, IfIndex: o.dst.IfIndex, Port: o.dst.Port, SZX: o.szx, Registered: at,
	}
}

// restore rebuilds the observers of regs (Config.Restore) and returns
// how many it restored. A registration whose client and token the edge
// holds already, or that is not valid, is not restored; nor is one beyond
// MaxObservers or MaxObserversPerPeer: it is counted refused and the
// Registry is told to forget it. A restored observer's first notification goes as a CON: its
// ACK shows the client is still there, and if none comes the
// registration ends. Sequence numbers go on from the clock (clockSeq).
func (e *Edge) restore(regs []Registration, now time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, r := range regs {
		key := obsKey{r.Peer, string(r.Token)}
		if _, ok := e.obs.observers[key]; ok {
			continue
		}
		r.Port = e.Socket.Port
		if !r.Peer.IsValid() || len(r.Token) > 8 || r.SZX > 6 {
			continue
		}
		if len(e.obs.observers) >= e.MaxObservers || len(e.obs.byPeer[key.peer]) >= e.MaxObserversPerPeer {
			e.stats.ends[endRefusedFull].Add(1)
			if e.Registry != nil {
				e.Registry.Deregister(r)
			}
			continue
		}
		dst := e.Socket
		dst.Remote, dst.IfIndex = r.Peer, r.IfIndex
		if r.Local.IsValid() {
			dst.Local = r.Local
		}
		o := &observer{
			key: key, resource: r.Resource, op: r.Op, dst: dst, szx: r.SZX, seq: seqBefore(now),
			sinceCON: e.ObserveCONEvery, lastCON: now,
		}
		e.link(o)
		e.stats.observers.Add(1)
		e.stats.restored.Add(1)
		n++
		if e.Registry != nil {
			e.Registry.Register(r)
		}
	}
	return n
}
