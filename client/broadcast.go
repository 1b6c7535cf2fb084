package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// Broadcast sends payload once to rawURL's host, a broadcast address
// (SO_BROADCAST is set) or a multicast group, from an unconnected socket,
// and calls each, in order, with every reply that arrives from anywhere
// until opts.Timeout (DefaultTimeout if zero) has passed or ctx ends:
// every node that heard the request may answer, each from its own
// address. rawURL is udp://HOST:PORT, whose replies are every datagram,
// or coap://HOST[:PORT]/PATH[?QUERY], sent as a NON request (RFC 7252
// §8.1) with opts.Method and opts.ContentFormat, whose replies are the
// responses with its token (Result.Code, ContentFormat and Body). It
// returns how many replies came; ctx ending is not an error. A request is
// sent once, not again: a resend would be answered by every node again.
func Broadcast(ctx context.Context, rawURL string, payload []byte, opts Options, each func(Result)) (int, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, invalid{fmt.Errorf("client: %w", err)}
	}
	port := u.Port()
	if u.Scheme == "coap" && port == "" {
		port = "5683"
	}
	p, perr := strconv.ParseUint(port, 10, 16)
	if u.Scheme != "udp" && u.Scheme != "coap" || perr != nil || p == 0 || u.Scheme == "udp" && u.Path != "" && u.Path != "/" {
		return 0, invalid{fmt.Errorf("client: %q: want udp://HOST:PORT or coap://HOST[:PORT]/PATH, HOST a broadcast address or a multicast group (an IPv6 zone as %%25, like udp://[ff02::1%%25eth0]:9000)", rawURL)}
	}
	match := func(b []byte) (Result, bool) { return Result{Body: b, ContentFormat: -1}, true }
	if u.Scheme == "coap" {
		if payload, match, err = coapNON(u, payload, opts); err != nil {
			return 0, invalid{fmt.Errorf("client: %q: %w", rawURL, err)}
		}
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
		r, ok := match(buf[:m])
		if !ok {
			continue // not a reply to the request
		}
		n++
		r.Body = append([]byte(nil), r.Body...)
		r.From = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		r.Tries, r.Latency = 1, time.Since(start)
		each(r)
	}
}

// coapNON returns the datagram of a NON request to u with payload, and
// the matcher of its responses: those with its token, their code,
// Content-Format and payload (aliasing the datagram).
func coapNON(u *url.URL, payload []byte, opts Options) ([]byte, func([]byte) (Result, bool), error) {
	code, err := coapMethod(opts.Method)
	if err != nil {
		return nil, nil, err
	}
	var ids [10]byte
	if _, err := rand.Read(ids[:]); err != nil {
		return nil, nil, err
	}
	token := ids[:8]
	var o message.Options
	for _, seg := range strings.Split(strings.Trim(u.Path, "/"), "/") {
		if seg != "" {
			o = append(o, message.Option{ID: message.URIPath, Value: []byte(seg)})
		}
	}
	if cf := opts.ContentFormat; cf != nil {
		o = append(o, message.Option{ID: message.ContentFormat, Value: binary.BigEndian.AppendUint16(nil, *cf)})
	}
	if u.RawQuery != "" {
		for q := range strings.SplitSeq(u.RawQuery, "&") {
			if q, err = url.QueryUnescape(q); err != nil {
				return nil, nil, fmt.Errorf("query: %w", err)
			}
			o = append(o, message.Option{ID: message.URIQuery, Value: []byte(q)})
		}
	}
	m := message.Message{Token: token, Code: codes.Code(code), MessageID: int32(binary.BigEndian.Uint16(ids[8:])), Type: message.NonConfirmable, Options: o, Payload: payload}
	buf := make([]byte, 0, 64+len(payload))
	buf = buf[:cap(buf)]
	k, err := coder.DefaultCoder.Encode(m, buf)
	if errors.Is(err, message.ErrTooSmall) {
		buf = make([]byte, k)
		k, err = coder.DefaultCoder.Encode(m, buf)
	}
	if err != nil {
		return nil, nil, err
	}
	match := func(b []byte) (Result, bool) {
		r := message.Message{Options: make(message.Options, 0, 16)}
		if _, err := coder.DefaultCoder.Decode(b, &r); err != nil || !bytes.Equal(r.Token, token) || r.Code>>5 < 2 {
			return Result{}, false
		}
		res := Result{Body: r.Payload, Code: uint8(r.Code), ContentFormat: -1}
		if cf, err := r.Options.ContentFormat(); err == nil {
			res.ContentFormat = int(cf)
		}
		return res, true
	}
	return buf[:k], match, nil
}
