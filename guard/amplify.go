package guard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"sync/atomic"
	"time"
)

// Header bytes of an IP packet carrying a UDP datagram: the amplification
// limit counts packets, payload and headers, because that is the
// bandwidth a reflected flood costs its victim.
const (
	overhead4 = 20 + 8
	overhead6 = 40 + 8
)

// Wire returns the size of the IP packet that carries n bytes of UDP
// payload to or from addr.
func Wire(addr netip.Addr, n int) int {
	if addr.Unmap().Is4() {
		return n + overhead4
	}
	return n + overhead6
}

// Limited reports whether replies to addr are subject to the
// amplification limit at now: the guard has a factor, and addr is neither
// trusted nor validated.
func (g *Guard) Limited(addr netip.Addr, now time.Time) bool {
	if g == nil || g.factor == 0 {
		return false
	}
	addr = addr.Unmap().WithZone("")
	if !g.trust.empty() && g.trust.contains(addr) {
		return false
	}
	return !g.validated.has(g.validKey(addr), uint32(g.clock(now)/int64(time.Second)))
}

// Trusted reports whether addr is trusted or validated at now: a CoAP
// source that may be told 4.29 rather than be dropped.
func (g *Guard) Trusted(addr netip.Addr, now time.Time) bool {
	if g == nil {
		return false
	}
	addr = addr.Unmap().WithZone("")
	if !g.trust.empty() && g.trust.contains(addr) {
		return true
	}
	return g.validated != nil && g.validated.has(g.validKey(addr), uint32(g.clock(now)/int64(time.Second)))
}

// Credit returns how many bytes, counted as IP packets (see Wire), may be
// sent to addr in reply to a datagram of n bytes from it, when addr is
// Limited.
func (g *Guard) Credit(addr netip.Addr, n int) int {
	return g.factor * Wire(addr, n)
}

// AllowReply reports whether a reply of n bytes may be sent to addr in an
// exchange in which addr sent received bytes; a refused reply is counted
// as dropped.
func (g *Guard) AllowReply(addr netip.Addr, received, n int, now time.Time) bool {
	return g.AllowReplies(addr, received, 0, n, now)
}

// AllowReplies is AllowReply for an exchange in which sent bytes, counted
// as IP packets (see Wire), were already sent to addr: the replies of one
// exchange share its credit.
func (g *Guard) AllowReplies(addr netip.Addr, received, sent, n int, now time.Time) bool {
	if !g.Limited(addr, now) || sent+Wire(addr, n) <= g.Credit(addr, received) {
		return true
	}
	g.dropped.Add(1)
	return false
}

// Factor returns the amplification factor: to a Limited address, at most
// Factor times the bytes received from it may be sent (0: no limit).
func (g *Guard) Factor() int {
	if g == nil {
		return 0
	}
	return g.factor
}

// CountCut counts a reply cut to fit the amplification limit.
func (g *Guard) CountCut() { g.cut.Add(1) }

// CountDropped counts a reply dropped by the amplification limit.
func (g *Guard) CountDropped() { g.dropped.Add(1) }

// Validate records that addr has shown it receives what is sent to it: it
// is not Limited for ValidFor from now.
func (g *Guard) Validate(addr netip.Addr, now time.Time) {
	if g == nil || g.validated == nil {
		return
	}
	addr = addr.Unmap().WithZone("")
	until := uint32((g.clock(now) + int64(g.validFor)) / int64(time.Second))
	g.validated.put(g.validKey(addr), until)
	g.validations.Add(1)
}

// EchoLen is the length of the Echo values a guard makes.
const EchoLen = 8

// echoWindow is the lifetime unit of Echo values: a value is accepted in
// the window it was made in and the next.
const echoWindow = 30 * time.Second

// Echo returns an Echo option value (RFC 9175) for addr at now: a MAC of
// the address and the time window under a per-process key, so that the
// gateway keeps no state per challenge and no one else can make one.
func (g *Guard) Echo(addr netip.Addr, now time.Time) [EchoLen]byte {
	return g.echo(addr.Unmap().WithZone(""), now.Unix()/int64(echoWindow/time.Second))
}

func (g *Guard) echo(addr netip.Addr, window int64) [EchoLen]byte {
	var msg [24]byte
	a := addr.As16()
	copy(msg[:16], a[:])
	binary.BigEndian.PutUint64(msg[16:], uint64(window))
	m := hmac.New(sha256.New, g.echoKey[:])
	m.Write(msg[:])
	var out [EchoLen]byte
	copy(out[:], m.Sum(nil))
	return out
}

// CheckEcho reports whether v is an Echo value that the guard made for
// addr in the current or the previous window; if so, addr is validated.
func (g *Guard) CheckEcho(addr netip.Addr, v []byte, now time.Time) bool {
	if g == nil || g.validated == nil || len(v) != EchoLen {
		return false
	}
	addr = addr.Unmap().WithZone("")
	w := now.Unix() / int64(echoWindow/time.Second)
	for _, win := range []int64{w, w - 1} {
		want := g.echo(addr, win)
		if hmac.Equal(v, want[:]) {
			g.Validate(addr, now)
			return true
		}
	}
	return false
}

func (g *Guard) validKey(addr netip.Addr) uint64 {
	a := addr.As16()
	return maphash.Bytes(g.validated.seed, a[:])
}

func randomKey(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("guard: crypto/rand: " + err.Error()) // never happens on supported systems
	}
}

// validated is a fixed-size, lock-free table of validated addresses: each
// entry packs a 32-bit tag of the address's keyed hash and the second (on
// the guard's clock) until which it is valid. A tag collision validates
// another address with probability ways/2^32 per lookup, for an attacker
// who cannot see the hash's seed.
type validated struct {
	e    []atomic.Uint64
	mask uint64
	seed maphash.Seed
}

func newValidated(size int) *validated {
	n := 1
	for n*ways < size {
		n <<= 1
	}
	return &validated{e: make([]atomic.Uint64, n*ways), mask: uint64(n - 1), seed: maphash.MakeSeed()}
}

func (v *validated) ways(h uint64) []atomic.Uint64 {
	i := (h & v.mask) * ways
	return v.e[i : i+ways]
}

func tag(h uint64) uint32 { return uint32(h>>32) | 1 }

func (v *validated) has(h uint64, now uint32) bool {
	t := tag(h)
	for i := range ways {
		e := v.ways(h)[i].Load()
		if uint32(e>>32) == t && uint32(e) > now {
			return true
		}
	}
	return false
}

// put records h as valid until until, in its way or in the way that
// expires first. Concurrent puts may lose one of them; the source then
// validates again.
func (v *validated) put(h uint64, until uint32) {
	t := tag(h)
	ws := v.ways(h)
	victim := 0
	for i := range ws {
		e := ws[i].Load()
		if uint32(e>>32) == t {
			victim = i
			break
		}
		if uint32(e) < uint32(ws[victim].Load()) {
			victim = i
		}
	}
	ws[victim].Store(uint64(t)<<32 | uint64(until))
}
