package exchange

import (
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSourceOOB: the control message names the source for IPv4 in
// ipi_spec_dst; for IPv6 the address, with the interface for a
// link-local source and for the unspecified one (the answer to a
// multicast request, from an address of the interface's).
func TestSourceOOB(t *testing.T) {
	for _, tc := range []struct {
		local   string
		ifindex uint32
	}{
		{"10.0.0.1:5683", 0},
		{"[2001:db8::1]:5683", 0},
		{"[fe80::1]:5683", 7},
		{"[::]:5683", 7},
	} {
		var buf [oobSize]byte
		ap := netip.MustParseAddrPort(tc.local)
		b := sourceOOB(buf[:0], Exchange{Local: ap, IfIndex: 7})
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		data := b[unix.CmsgLen(0):]
		if ap.Addr().Is4() {
			p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			if h.Type != unix.IP_PKTINFO || netip.AddrFrom4(p.Spec_dst) != ap.Addr() || p.Ifindex != 0 {
				t.Errorf("%s: type %d, spec_dst %v, ifindex %d", tc.local, h.Type, netip.AddrFrom4(p.Spec_dst), p.Ifindex)
			}
			continue
		}
		p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
		if h.Type != unix.IPV6_PKTINFO || netip.AddrFrom16(p.Addr) != ap.Addr() || p.Ifindex != tc.ifindex {
			t.Errorf("%s: type %d, addr %v, ifindex %d (want %d)", tc.local, h.Type, netip.AddrFrom16(p.Addr), p.Ifindex, tc.ifindex)
		}
	}
}
