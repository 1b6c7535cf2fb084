package exchange

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize holds one IP_PKTINFO or IPV6_PKTINFO control message.
const oobSize = 64

// sourceOOB appends to dst the control message that makes the kernel send
// from ex.Local: IP_PKTINFO's ipi_spec_dst for IPv4 (also accepted on a
// dual-stack socket), IPV6_PKTINFO for IPv6. The interface is left to
// routing except for link-local sources, which need it, and for the
// unspecified address (the answer to a multicast request), which leaves
// the kernel to pick a source among the interface's addresses.
func sourceOOB(dst []byte, ex Exchange) []byte {
	local := ex.Local.Addr()
	if local.Is4() || local.Is4In6() {
		b := dst[len(dst) : len(dst)+unix.CmsgSpace(unix.SizeofInet4Pktinfo)]
		clear(b)
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level = unix.IPPROTO_IP
		h.Type = unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		p.Spec_dst = local.Unmap().As4()
		return dst[:len(dst)+len(b)]
	}
	b := dst[len(dst) : len(dst)+unix.CmsgSpace(unix.SizeofInet6Pktinfo)]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_IPV6
	h.Type = unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
	p.Addr = local.As16()
	if local.IsLinkLocalUnicast() || local.IsUnspecified() {
		p.Ifindex = uint32(ex.IfIndex)
	}
	return dst[:len(dst)+len(b)]
}
