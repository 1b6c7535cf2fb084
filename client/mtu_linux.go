package client

import (
	"net"

	"golang.org/x/sys/unix"
)

// dontFragment forbids fragmenting what c sends (IP_MTU_DISCOVER or
// IPV6_MTU_DISCOVER set to PMTUDISC_DO): a datagram larger than the path
// MTU fails with EMSGSIZE.
func dontFragment(c *net.UDPConn, v6 bool) error {
	return onSocket(c, func(fd int) error {
		if v6 {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
		}
		return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	})
}

// pathMTU returns the path MTU the kernel knows for c's peer (IP_MTU or
// IPV6_MTU, on a connected socket).
func pathMTU(c *net.UDPConn, v6 bool) (int, error) {
	var mtu int
	err := onSocket(c, func(fd int) error {
		var err error
		if v6 {
			mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU)
		} else {
			mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
		}
		return err
	})
	return mtu, err
}

// broadcast allows c to send to broadcast addresses (SO_BROADCAST).
func broadcast(c *net.UDPConn) error {
	return onSocket(c, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
	})
}

// onSocket runs fn on c's descriptor.
func onSocket(c *net.UDPConn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
