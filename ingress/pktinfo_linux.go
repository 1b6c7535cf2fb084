package ingress

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize is large enough for the IP_PKTINFO or IPV6_PKTINFO control
// message and the SO_RXQ_OVFL one, with room to spare.
const oobSize = 128

func setSocketOptions(fd int, network string, rcvbuf int) error {
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return err
		}
	}
	// The kernel then reports, with each datagram, how many it dropped on
	// this socket so far because the receive buffer was full. Best effort:
	// without it the counter stays 0.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	if network != "udp6" {
		// On an AF_INET6 dual-stack socket this still reports IPv4 datagrams.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil && network == "udp4" {
			return err
		}
	}
	if network != "udp4" {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); err != nil && network == "udp6" {
			return err
		}
	}
	return nil
}

// control is what the control messages of one datagram say.
type control struct {
	dst       netip.Addr // the address the datagram was sent to, if known
	spec      netip.Addr // IPv4: the local address that answers it (ipi_spec_dst), if known
	ifindex   int        // the interface it arrived on, 0 if unknown
	drops     uint32     // the socket's cumulative receive-buffer drops (SO_RXQ_OVFL)
	dropsSeen bool       // whether the kernel reported drops (only once there are some)
}

// parseControl reads the IP_PKTINFO or IPV6_PKTINFO and the SO_RXQ_OVFL
// control messages in oob. It does not allocate.
func parseControl(oob []byte) control {
	var c control
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return c
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			c.dst, c.spec, c.ifindex = netip.AddrFrom4(p.Addr), netip.AddrFrom4(p.Spec_dst), int(p.Ifindex)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			c.dst, c.ifindex = netip.AddrFrom16(p.Addr), int(p.Ifindex)
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			c.drops, c.dropsSeen = *(*uint32)(unsafe.Pointer(&data[0])), true
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return c
}

// joinGroup has socket fd join the multicast group on the interface
// ifindex (0: the one routing picks).
func joinGroup(fd int, group netip.Addr, ifindex int) error {
	if group.Is4() {
		return unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP,
			&unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(ifindex)})
	}
	return unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP,
		&unix.IPv6Mreq{Multiaddr: group.As16(), Interface: uint32(ifindex)})
}

// dontFragment forbids fragmenting what socket fd sends (IPv4, and IPv6
// unless v4 says the socket is IPv4 only): a datagram larger than the
// path MTU fails with EMSGSIZE.
func dontFragment(fd int, v4 bool) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO); err != nil && v4 {
		return err
	}
	if v4 {
		return nil
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
}
