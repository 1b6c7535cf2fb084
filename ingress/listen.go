package ingress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// Listen binds a UDP socket for a listener on addr ("0.0.0.0:9000",
// "127.0.0.1:0", "[::]:5683") and enables the packet-info options that
// let a wildcard bind learn each datagram's destination address, so that
// egress can answer from it. network is "udp4", "udp6" or "udp". rcvbuf, if
// positive, sets SO_RCVBUF.
func Listen(ctx context.Context, network, addr string, rcvbuf int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = setSocketOptions(int(fd), network, rcvbuf)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err) // net says listen, network and address
	}
	return pc.(*net.UDPConn), nil
}

// JoinGroup has c, a socket of Listen bound to the wildcard address of
// group's family, join the multicast group on the interface named ifname
// ("" lets routing pick it): the listener then reads the group's
// datagrams too, and answers them from its unicast address on the
// interface they came in on.
func JoinGroup(c *net.UDPConn, group netip.Addr, ifname string) error {
	if !group.IsMulticast() {
		return fmt.Errorf("ingress: join %s: not a multicast address", group)
	}
	ifindex := 0
	if ifname != "" {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("ingress: join %s%%%s: %w", group, ifname, err)
		}
		ifindex = ifi.Index
	}
	if err := onSocket(c, func(fd int) error { return joinGroup(fd, group.WithZone(""), ifindex) }); err != nil {
		return fmt.Errorf("ingress: join %s: %w", group, err)
	}
	return nil
}

// DontFragment forbids fragmentation of what c sends (IP_MTU_DISCOVER
// and IPV6_MTU_DISCOVER set to PMTUDISC_DO): a reply larger than the
// path MTU is refused by the kernel with EMSGSIZE, which
// exchange.Exchange.Write counts (TooBig), rather than sent in fragments.
func DontFragment(c *net.UDPConn) error {
	v4 := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Is4()
	if err := onSocket(c, func(fd int) error { return dontFragment(fd, v4) }); err != nil {
		return fmt.Errorf("ingress: don't fragment: %w", err)
	}
	return nil
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
