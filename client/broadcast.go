package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"time"
)

// Broadcast sends payload once to the udp://HOST:PORT of rawURL, a
// broadcast address (SO_BROADCAST is set) or a multicast group, from an
// unconnected socket, and calls each, in order, with every datagram that
// arrives from anywhere until opts.Timeout (DefaultTimeout if zero) has
// passed or ctx ends: every node that heard the request may answer, each
// from its own address. It returns how many replies came; ctx ending is
// not an error. A request is sent once, not again: a resend would be
// answered by every node again.
func Broadcast(ctx context.Context, rawURL string, payload []byte, opts Options, each func(Result)) (int, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, invalid{fmt.Errorf("client: %w", err)}
	}
	p, perr := strconv.ParseUint(u.Port(), 10, 16)
	if u.Scheme != "udp" || perr != nil || p == 0 || (u.Path != "" && u.Path != "/") {
		return 0, invalid{fmt.Errorf("client: %q: want udp://HOST:PORT (a broadcast address or a multicast group; an IPv6 zone as %%25, like udp://[ff02::1%%25eth0]:9000)", rawURL)}
	}
	to, err := resolve(ctx, u.Hostname(), uint16(p))
	if err != nil {
		return 0, fmt.Errorf("client: %q: %w", rawURL, err)
	}
	network, unspec := "udp4", netip.IPv4Unspecified()
	if to.Addr().Is6() {
		network, unspec = "udp6", netip.IPv6Unspecified()
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(unspec, 0)))
	if err != nil {
		return 0, fmt.Errorf("client: %w", err)
	}
	defer c.Close()
	if to.Addr().Is4() {
		if err := broadcast(c); err != nil {
			return 0, fmt.Errorf("client: SO_BROADCAST: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	if _, err := c.WriteToUDPAddrPort(payload, to); err != nil {
		return 0, fmt.Errorf("client: %s: %w", to, err)
	}
	c.SetReadDeadline(start.Add(opts.timeout()))
	if ctx.Err() != nil {
		return 0, nil
	}
	buf := make([]byte, 65536)
	n := 0
	for {
		m, from, err := c.ReadFromUDPAddrPort(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return n, nil // the timeout, or ctx
		case err != nil:
			return n, fmt.Errorf("client: %w", err)
		}
		n++
		each(Result{
			Body:          append([]byte(nil), buf[:m]...),
			From:          netip.AddrPortFrom(from.Addr().Unmap(), from.Port()),
			Tries:         1,
			Latency:       time.Since(start),
			ContentFormat: -1,
		})
	}
}
