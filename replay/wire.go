package replay

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// ErrNoDatagram is returned by Datagram for a request that was not one
// datagram: a CoAP request reassembled from a Block1 upload, or anything a
// ws listener received (a WebSocket message, a connection event).
var ErrNoDatagram = errors.New("replay: request was not one datagram")

// Datagram returns the datagram a captured request was received as, byte for
// byte: the body of a raw request; the udpgate-datagram-head and the body of
// a CoAP request; the RPC envelope re-encoded from udpgate-rpc-id,
// -service and -method with the body as params (the same bytes when the
// client encoded it canonically). The result is newly allocated. A
// request from a ws listener came in a WebSocket message, not a datagram:
// ErrNoDatagram.
func Datagram(h nats.Header, body []byte) ([]byte, error) {
	switch protocolOf(h) {
	case schemas.ProtocolWS:
		return nil, ErrNoDatagram
	case schemas.ProtocolCoAP:
		v := h.Get(schemas.HeaderDatagramHead)
		if v == "" {
			return nil, ErrNoDatagram
		}
		head, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("replay: bad %s: %w", schemas.HeaderDatagramHead, err)
		}
		return append(head, body...), nil
	case schemas.ProtocolRPC:
		id, err := strconv.ParseUint(h.Get(schemas.HeaderRPCID), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("replay: bad %s %q", schemas.HeaderRPCID, h.Get(schemas.HeaderRPCID))
		}
		b, err := proto.Marshal(&rpcpb.Call{
			Id:      id,
			Service: h.Get(schemas.HeaderRPCService),
			Method:  h.Get(schemas.HeaderRPCMethod),
			Params:  body,
		})
		if err != nil {
			return nil, fmt.Errorf("replay: encode RPC call: %w", err)
		}
		return b, nil
	}
	return append([]byte(nil), body...), nil
}

// Wire sends the selected requests from conn to to, one datagram each,
// exactly as they were received (see Datagram), paced by r.Speed; those
// that were no datagram (ErrNoDatagram) are counted as Skipped. While it
// runs and for r.Wait after the last send (less if every request was
// answered), it counts the datagrams that come back to conn from to as
// Answered. conn should not be connected; it stays open: the caller owns it.
func (r *Replayer) Wire(ctx context.Context, conn *net.UDPConn, to netip.AddrPort) (Result, error) {
	var res Result
	if conn == nil || !to.IsValid() {
		return res, errors.New("replay: Wire needs a socket and an address")
	}
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	var answered atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			_, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ICMP port unreachable, reported on Linux
			}
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == to {
				answered.Add(1)
			}
		}
	})
	stopReader := func() {
		conn.SetReadDeadline(time.Unix(1, 0)) // in the past: the read returns
		wg.Wait()
		conn.SetReadDeadline(time.Time{})
		res.Answered = int(answered.Load())
	}

	start := time.Now()
	err := r.selectRequests(ctx, &res, func(c captured) {
		b, err := Datagram(c.msg.Headers(), c.msg.Data())
		switch {
		case errors.Is(err, ErrNoDatagram):
			res.Skipped++
			return
		case err != nil:
			res.Errors++
			return
		}
		if _, err := conn.WriteToUDPAddrPort(b, to); err != nil {
			res.Errors++
			return
		}
		res.Sent++
	})
	res.Duration = time.Since(start)
	if err == nil {
		waitFor(ctx, r.Wait, func() bool { return answered.Load() >= int64(res.Sent) }, nil)
	}
	stopReader()
	return res, err
}

// waitFor waits up to d, until ctx ends, or until done reports true; it
// checks done whenever notify delivers, or every 10 ms if notify is nil.
func waitFor(ctx context.Context, d time.Duration, done func() bool, notify <-chan struct{}) {
	if d <= 0 || done() {
		return
	}
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	var tick <-chan time.Time
	if notify == nil {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		tick = t.C
	}
	for !done() {
		select {
		case <-timeout.C:
			return
		case <-ctx.Done():
			return
		case <-notify:
		case <-tick:
		}
	}
}
