package ingress

import (
	"context"
	"fmt"
	"net"
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
