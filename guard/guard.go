// Package guard decides, for one listener, which datagrams the gateway
// accepts and how much it may send back: allow and deny lists of source
// prefixes, a token bucket per source prefix in a table of fixed size, a
// token bucket for the whole listener, and the amplification limit (the
// QUIC rule: to a source that has not proved it receives at its address,
// send at most Factor times what it sent).
//
// A Guard is safe for concurrent use. Admit, the per-datagram check, takes
// no lock shared across sources and does not allocate; the source table
// cannot grow, so a flood from spoofed addresses can only evict idle
// entries.
package guard

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of Config's fields where zero does not
// mean "off".
const (
	DefaultPrefix4  = 32
	DefaultPrefix6  = 64
	DefaultSources  = 16384
	DefaultValidFor = 10 * time.Minute
	// DefaultValidated is the capacity of the table of validated sources.
	DefaultValidated = 4096
)

// Config configures a Guard. The zero Config admits everything and limits
// nothing.
type Config struct {
	// Allow, if not empty, lists the only source prefixes admitted.
	Allow []netip.Prefix
	// Deny lists source prefixes never admitted; it wins over Allow.
	Deny []netip.Prefix
	// Trust lists source prefixes exempt from the amplification limit, as
	// if validated; CoAP sources in it get 4.29 when rate limited.
	Trust []netip.Prefix

	// Rate is the datagrams per second each source prefix may send; 0
	// means no per-source limit.
	Rate float64
	// Burst is how many datagrams a source prefix may send at once
	// (2*Rate, at least 1, if zero).
	Burst int
	// Prefix4 and Prefix6 are the lengths of the source prefixes that
	// share a bucket (DefaultPrefix4 and DefaultPrefix6 if zero).
	Prefix4, Prefix6 int
	// Sources is the number of source buckets (DefaultSources if zero,
	// rounded up to a multiple of 4).
	Sources int

	// ListenerRate is the datagrams per second the listener accepts from
	// all sources together; 0 means no limit.
	ListenerRate float64
	// ListenerBurst is the listener's burst (2*ListenerRate if zero).
	ListenerBurst int

	// Factor is the amplification limit: to a source that is neither
	// trusted nor validated, the gateway sends at most Factor times the
	// bytes it received in the exchange, counted as IP packets. 0 means
	// no limit.
	Factor int
	// ValidFor is how long a validated source stays validated
	// (DefaultValidFor if zero).
	ValidFor time.Duration
	// Validated is the capacity of the table of validated sources
	// (DefaultValidated if zero).
	Validated int
}

// Verdict is Admit's decision on one datagram.
type Verdict uint8

// Verdicts of Admit.
const (
	Admitted      Verdict = iota
	Denied                // the source is in the deny list
	NotAllowed            // the allow list is not empty and lacks the source
	RateLimited           // the source prefix's bucket is empty
	GlobalLimited         // the listener's bucket is empty
)

func (v Verdict) String() string {
	switch v {
	case Admitted:
		return "admitted"
	case Denied:
		return "denied"
	case NotAllowed:
		return "not_allowed"
	case RateLimited:
		return "rate_limited"
	case GlobalLimited:
		return "global_limited"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Stats are a guard's cumulative counts.
type Stats struct {
	Admitted      uint64
	Denied        uint64 // dropped: source in the deny list
	NotAllowed    uint64 // dropped: source not in the allow list
	RateLimited   uint64 // dropped (CoAP: 4.29 to validated sources): source over its rate
	GlobalLimited uint64 // dropped (CoAP: 4.29 to validated sources): listener over its rate
	Cut           uint64 // replies cut to fit the amplification limit (CoAP Block2, 4.01 Echo)
	Dropped       uint64 // replies dropped by the amplification limit
	Validations   uint64 // sources validated (CoAP Echo, acknowledged separate response)
	// Sources is the number of source buckets in use, at most
	// SourceCapacity.
	Sources        int
	SourceCapacity int
	Evictions      uint64 // source buckets reused for another source
}

// Guard is one listener's admission and amplification policy. Make it
// with New. It is safe for concurrent use.
type Guard struct {
	allow, deny, trust prefixSet
	start              time.Time // the zero of the guard's clock
	prefix4, prefix6   int

	sources *table // nil without a per-source limit

	global   bool
	gT, gTau int64        // the listener's bucket: interval and tolerance, ns
	gTAT     atomic.Int64 // its theoretical arrival time, ns since start

	factor    int
	validFor  time.Duration
	validated *validated
	echoKey   [32]byte

	admitted, denied, notAllowed, rateLimited, globalLimited atomic.Uint64
	cut, dropped, validations                                atomic.Uint64
}

// New returns a guard for c, or an error naming what is wrong with it.
func New(c Config) (*Guard, error) {
	var errs []error
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate > 1e9 {
		errs = append(errs, fmt.Errorf("guard: rate %v is not 0..1e9", c.Rate))
	}
	if c.ListenerRate < 0 || math.IsNaN(c.ListenerRate) || math.IsInf(c.ListenerRate, 0) || c.ListenerRate > 1e9 {
		errs = append(errs, fmt.Errorf("guard: listener rate %v is not 0..1e9", c.ListenerRate))
	}
	if c.Burst < 0 || c.ListenerBurst < 0 {
		errs = append(errs, errors.New("guard: burst must not be negative"))
	}
	if c.Prefix4 < 0 || c.Prefix4 > 32 || c.Prefix6 < 0 || c.Prefix6 > 128 {
		errs = append(errs, fmt.Errorf("guard: source prefix lengths /%d and /%d are not 0..32 and 0..128", c.Prefix4, c.Prefix6))
	}
	if c.Factor < 0 {
		errs = append(errs, fmt.Errorf("guard: amplification factor %d is negative", c.Factor))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g := &Guard{
		allow: newPrefixSet(c.Allow), deny: newPrefixSet(c.Deny), trust: newPrefixSet(c.Trust),
		start: time.Now(), prefix4: c.Prefix4, prefix6: c.Prefix6,
		factor: c.Factor, validFor: c.ValidFor,
	}
	if g.prefix4 == 0 {
		g.prefix4 = DefaultPrefix4
	}
	if g.prefix6 == 0 {
		g.prefix6 = DefaultPrefix6
	}
	if c.Rate > 0 {
		size := c.Sources
		if size <= 0 {
			size = DefaultSources
		}
		g.sources = newTable(size, c.Rate, c.Burst)
	}
	if c.ListenerRate > 0 {
		g.global = true
		g.gT, g.gTau = bucket(c.ListenerRate, c.ListenerBurst)
	}
	if g.factor > 0 {
		if g.validFor <= 0 {
			g.validFor = DefaultValidFor
		}
		n := c.Validated
		if n <= 0 {
			n = DefaultValidated
		}
		g.validated = newValidated(n)
		randomKey(g.echoKey[:])
	}
	return g, nil
}

// bucket returns the GCRA emission interval and tolerance for rate and
// burst (2*rate, at least 1, if burst is zero).
func bucket(rate float64, burst int) (t, tau int64) {
	if burst <= 0 {
		burst = int(min(max(1, 2*rate), 1<<30))
	}
	// Clamped so that no arithmetic on the guard's clock overflows: one
	// datagram per 11 days at the slowest, a tolerance of 3 years at most.
	t = int64(min(max(1, float64(time.Second)/rate), 1e15))
	return t, int64(min(float64(t)*float64(burst-1), 1e17))
}

// clock returns now on the guard's clock: nanoseconds since New, at least
// 1 (0 marks an empty bucket).
func (g *Guard) clock(now time.Time) int64 {
	return max(1, int64(now.Sub(g.start))+1)
}

// Admit decides on one datagram from addr, read at now. When the verdict
// is RateLimited or GlobalLimited, wait is how long until the source (or
// the listener) may send again. It counts the verdict. It does not
// allocate.
func (g *Guard) Admit(addr netip.Addr, now time.Time) (v Verdict, wait time.Duration) {
	addr = addr.Unmap().WithZone("")
	switch {
	case !g.deny.empty() && g.deny.contains(addr):
		g.denied.Add(1)
		return Denied, 0
	case !g.allow.empty() && !g.allow.contains(addr):
		g.notAllowed.Add(1)
		return NotAllowed, 0
	}
	if g.sources == nil && !g.global {
		g.admitted.Add(1)
		return Admitted, 0
	}
	t := g.clock(now)
	if g.sources != nil {
		if w := g.sources.take(g.key(addr), t); w > 0 {
			g.rateLimited.Add(1)
			return RateLimited, time.Duration(w)
		}
	}
	if g.global {
		if w := g.takeGlobal(t); w > 0 {
			g.globalLimited.Add(1)
			return GlobalLimited, time.Duration(w)
		}
	}
	g.admitted.Add(1)
	return Admitted, 0
}

// takeGlobal takes a token from the listener's bucket; it returns 0, or
// how long until one is available.
func (g *Guard) takeGlobal(now int64) int64 {
	for {
		old := g.gTAT.Load()
		tat := max(old, now)
		if tat-now > g.gTau {
			return tat - g.gTau - now
		}
		if g.gTAT.CompareAndSwap(old, tat+g.gT) {
			return 0
		}
	}
}

// key returns the source prefix of addr as two words.
func (g *Guard) key(addr netip.Addr) [2]uint64 {
	bits := g.prefix6
	if addr.Is4() {
		bits = g.prefix4
	}
	p, _ := addr.Prefix(bits)
	b := p.Addr().As16()
	var k [2]uint64
	for i := range 8 {
		k[0] = k[0]<<8 | uint64(b[i])
		k[1] = k[1]<<8 | uint64(b[8+i])
	}
	if addr.Is4() {
		k[0] |= 1 << 63 // never equal to an IPv6 key: those are not mapped
	}
	return k
}

// Stats returns a snapshot of the guard's counters.
func (g *Guard) Stats() Stats {
	st := Stats{
		Admitted: g.admitted.Load(), Denied: g.denied.Load(), NotAllowed: g.notAllowed.Load(),
		RateLimited: g.rateLimited.Load(), GlobalLimited: g.globalLimited.Load(),
		Cut: g.cut.Load(), Dropped: g.dropped.Load(), Validations: g.validations.Load(),
	}
	if g.sources != nil {
		st.Sources = int(g.sources.used.Load())
		st.SourceCapacity = len(g.sources.sets) * ways
		st.Evictions = g.sources.evictions.Load()
	}
	return st
}
