// Package rpc is udpgate's RPC edge: it decodes the protobuf envelope of
// calls that arrive on an rpc listener (schemas/rpcpb.Call) and encodes the
// replies (schemas/rpcpb.Reply) with the call's id.
//
// Ingress passes every datagram of an rpc listener to Edge.Receive, which
// returns the call to publish, or nil for a datagram that is not a call: it
// is dropped and counted, never answered, so the listener cannot be used to
// amplify traffic. Each published call is the exchange's exchange.Replier:
// egress hands it the worker's reply, or the reason none will come
// (STATUS_DEADLINE_EXCEEDED, STATUS_UNAVAILABLE). Calls are not deduplicated:
// a client's retry is a new call, answered again.
package rpc

import (
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Edge decodes the calls of one rpc listener socket. Set Socket, then use
// it from any goroutine: it is safe for concurrent use.
type Edge struct {
	// Socket is the listener (Conn, SetSource, Port); Remote, Local and
	// IfIndex are filled per datagram.
	Socket exchange.Exchange
	Log    *slog.Logger

	calls, malformed, replies, deadline, unavailable, unimplemented, sendErrors atomic.Uint64
}

// Stats are cumulative counts of one rpc listener's envelopes.
type Stats struct {
	Calls       uint64 // calls returned for publishing
	Malformed   uint64 // datagrams that are not a call: dropped, never answered
	Replies     uint64 // replies sent for workers
	Deadline    uint64 // STATUS_DEADLINE_EXCEEDED sent: no worker answered in time
	Unavailable uint64 // STATUS_UNAVAILABLE sent: the call could not be published
	// Unimplemented counts STATUS_UNIMPLEMENTED sent by the gateway: no
	// group serves the call's service and method.
	Unimplemented uint64
	SendErrors    uint64
}

// Stats returns a snapshot of the edge's counters.
func (e *Edge) Stats() Stats {
	return Stats{
		Calls: e.calls.Load(), Malformed: e.malformed.Load(), Replies: e.replies.Load(),
		Deadline: e.deadline.Load(), Unavailable: e.unavailable.Load(), Unimplemented: e.unimplemented.Load(), SendErrors: e.sendErrors.Load(),
	}
}

// Call is one decoded call to publish, and its exchange's Replier.
type Call struct {
	ID      uint64
	Service string
	Method  string
	Params  []byte // owned by the Call
	// Connection names the WebSocket connection a call decoded by
	// Decode came on (the udpgate-ws-connection header); empty for a
	// datagram's.
	Connection string

	edge  *Edge
	dst   exchange.Exchange
	write func([]byte) error // Decode's: where the reply goes instead of dst
	done  atomic.Bool
}

// Receive decodes b, sent by remote to local on interface ifindex. It
// returns nil, after counting, for anything but a call with a service and a
// method of at most 255 bytes each. It does not keep b.
func (e *Edge) Receive(b []byte, remote, local netip.AddrPort, ifindex int) *Call {
	var m rpcpb.Call
	if err := proto.Unmarshal(b, &m); err != nil || !validName(m.Service) || !validName(m.Method) {
		e.malformed.Add(1)
		return nil
	}
	dst := e.Socket
	dst.Remote, dst.Local, dst.IfIndex = remote, local, ifindex
	e.calls.Add(1)
	return &Call{
		ID: m.Id, Service: m.Service, Method: m.Method,
		Params: append([]byte(nil), m.Params...),
		edge:   e, dst: dst,
	}
}

// Decode decodes b, a call that came in a message of connection conn (a
// WebSocket listener's) rather than in a datagram, from remote to local.
// Its Reply is not written to a socket but handed, encoded, to write,
// once, from any goroutine (egress's); write owns the slice and must not
// block. Decode returns nil, after counting, for what Receive refuses. It
// does not keep b.
func (e *Edge) Decode(b []byte, conn string, remote, local netip.AddrPort, write func([]byte) error) *Call {
	c := e.Receive(b, remote, local, 0)
	if c != nil {
		c.Connection, c.write = conn, write
	}
	return c
}

func validName(s string) bool {
	return s != "" && len(s) <= 255 && utf8.ValidString(s)
}

// Reply implements exchange.Replier: it sends the worker's reply, with the
// status from the udpgate-rpc-status header (STATUS_INTERNAL when the
// worker failed).
func (c *Call) Reply(status string, header map[string][]string, body []byte) error {
	get := func(k string) string {
		if v := header[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	r := &rpcpb.Reply{Id: c.ID, Body: body}
	switch {
	case status != schemas.StatusOK:
		r.Status, r.Body = rpcpb.Status_STATUS_INTERNAL, nil
	default:
		if s := get(schemas.HeaderRPCStatus); s != "" {
			n, err := strconv.ParseInt(s, 10, 32)
			if err != nil || n < 0 {
				r.Status, r.Body = rpcpb.Status_STATUS_INTERNAL, nil
				break
			}
			r.Status = rpcpb.Status(n)
		}
		r.Error = get(schemas.HeaderRPCError)
	}
	c.edge.replies.Add(1)
	return c.send(r)
}

// Fail implements exchange.Replier.
func (c *Call) Fail(why exchange.Failure) {
	r := &rpcpb.Reply{Id: c.ID, Status: rpcpb.Status_STATUS_UNAVAILABLE}
	switch why {
	case exchange.NoAnswer:
		r.Status = rpcpb.Status_STATUS_DEADLINE_EXCEEDED
		c.edge.deadline.Add(1)
	case exchange.Unserved:
		r.Status = rpcpb.Status_STATUS_UNIMPLEMENTED
		c.edge.unimplemented.Add(1)
	default:
		c.edge.unavailable.Add(1)
	}
	c.send(r)
}

// send encodes and writes r, once per call.
func (c *Call) send(r *rpcpb.Reply) error {
	if !c.done.CompareAndSwap(false, true) {
		return nil
	}
	b, err := proto.Marshal(r)
	switch {
	case err != nil:
	case c.write != nil:
		err = c.write(b)
	default:
		err = c.dst.Write(b)
	}
	if err != nil {
		c.edge.sendErrors.Add(1)
		if c.edge.Log != nil {
			c.edge.Log.Debug("rpc: reply", "err", err)
		}
	}
	return err
}
