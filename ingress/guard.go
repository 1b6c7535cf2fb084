package ingress

import (
	"net/netip"
	"time"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
)

// admit asks the listener's guard about datagram b from remote, before
// anything else looks at it. A refused datagram is counted by the guard
// and dropped, except that a CoAP request from a trusted or validated
// source over its rate is answered 4.29 Too Many Requests with the seconds
// until it may send again (a spoofed source gets nothing: the answer
// could be aimed at someone else). Admitting and dropping do not
// allocate.
func (s *Server) admit(b []byte, remote netip.AddrPort, ctl control) bool {
	if s.Guard == nil {
		return true
	}
	now := time.Now()
	v, wait := s.Guard.Admit(remote.Addr(), now)
	switch v {
	case guard.Admitted:
		return true
	case guard.RateLimited, guard.GlobalLimited:
		if _, group := groupSource(ctl, s.port); group && s.wildcard {
			return false // no error answers a multicast (or broadcast) request
		}
		if s.coapEdge != nil && s.dtlsEdge == nil && s.Guard.Trusted(remote.Addr(), now) { // a DTLS listener answers nothing in plaintext
			dst := exchange.Exchange{Conn: s.Conn, SetSource: s.wildcard, Port: s.port, Local: s.localAddr, TooBig: &s.stats.tooBig}
			dst.Remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
			if s.wildcard && ctl.dst.IsValid() {
				dst.Local = netip.AddrPortFrom(ctl.dst.Unmap(), s.port)
				dst.IfIndex = ctl.ifindex
			}
			s.coapEdge.TooManyRequests(b, dst, wait)
		}
	}
	return false
}

// size returns the bytes the client sent for d, for the amplification
// limit: the datagram of a raw request; the encoding of an RPC call's
// fields (what a client must have sent at least).
func (d datagram) size() int {
	if d.rpc != nil {
		return d.rpc.Size()
	}
	return len(d.data)
}
