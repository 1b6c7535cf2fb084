package ingress

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize is large enough for the IP_PKTINFO or IPV6_PKTINFO control
// message and one more.
const oobSize = 128

func setSocketOptions(fd int, network string, rcvbuf int) error {
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return err
		}
	}
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

// parseDestination returns the destination address and interface index from
// the IP_PKTINFO or IPV6_PKTINFO control message in oob. It does not
// allocate.
func parseDestination(oob []byte) (netip.Addr, int, bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return netip.Addr{}, 0, false
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom4(p.Addr), int(p.Ifindex), true
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom16(p.Addr), int(p.Ifindex), true
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.Addr{}, 0, false
}
