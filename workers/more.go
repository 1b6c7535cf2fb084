package workers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/schemas"
)

// ErrNotRaw is the error of Request.ReplyMore on a request that is not
// from a raw listener: a CoAP, RPC or ws exchange is answered once.
var ErrNotRaw = errors.New("workers: several replies are for requests of raw listeners")

// errNotHandling is the error of Request.ReplyMore outside the Handle
// call of a Server that passed the request.
var errNotHandling = errors.New("workers: ReplyMore outside the Handle call of the Server that passed the request: its final reply is sent, or it has none")

// moreHeader is the header of a reply with more to follow. It is shared:
// traceReply copies it before adding to it.
var moreHeader = nats.Header{schemas.HeaderMore: {"1"}}

// ReplyMore sends body to the client at once, as a reply with more to
// follow (schemas.HeaderMore): the gateway sends it and keeps the exchange
// open for the next one, until the handler's final reply, what it writes
// to its ResponseWriter, or the request's deadline. The client receives
// the replies in the order they are sent, the final one last. To a source
// the listener's guard limits (neither trusted nor validated) they
// together stay within the amplification limit: the gateway drops the
// first reply beyond it, silently for the worker, and ends the exchange.
//
// Only a request of a raw listener takes several replies: on any other
// ReplyMore sends nothing and returns ErrNotRaw. It sends nothing and
// returns an error too when ctx is done (the request's deadline has
// passed: the gateway would drop the reply as late), when the request has
// no reply subject (a reply=off listener's), and outside the Handle call
// of the Server that passed r: a reply with more to follow must precede
// the final one. It may be called from goroutines that the handler waits
// for. Each call publishes one message, on the Server's connection,
// which the final reply follows.
//
// The handler ends the exchange with its final reply: returning nil
// without writing leaves it open until the deadline, and returning an
// error ends it with nothing more sent (schemas/README.md, "Several
// replies to one request"). A Durable request that is redelivered (its
// instance died, or the handler returned ErrRetry) is handled again from
// the start, and the replies it sends again reach the client if the
// exchange is still open: return ErrRetry before the first ReplyMore.
func (r *Request) ReplyMore(ctx context.Context, body []byte) error {
	if r.Protocol != schemas.ProtocolRaw || r.CoAP != nil || r.RPC != nil {
		return ErrNotRaw
	}
	if r.Reply == "" {
		return errNoReplySubject
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("workers: reply with more to follow: %w", err)
	}
	m := r.more
	if m == nil {
		return errNotHandling
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reply == "" || m.reply != r.Reply {
		return errNotHandling
	}
	if err := m.nc.PublishMsg(&nats.Msg{Subject: r.Reply, Header: traceReply(moreHeader, m.span, r.Header), Data: body}); err != nil {
		return fmt.Errorf("workers: reply with more to follow: %w", err)
	}
	return nil
}

// more lets the handler of one request at a time send replies with more
// to follow (Request.ReplyMore). A handler goroutine reuses one, in its
// response, for every request it handles.
type more struct {
	// mu guards what follows, and holds a ReplyMore's publish until it is
	// done: once end returns, no reply with more to follow is published
	// for the request, so the final reply is the last.
	mu    sync.Mutex
	nc    *nats.Conn
	span  trace.Span // the request's, nil if untraced
	reply string     // the reply subject of the request being handled; empty between requests
}

// begin readies m for req, about to be handled; replies go out on nc with
// span's trace context.
func (m *more) begin(nc *nats.Conn, req *Request, span trace.Span) {
	m.mu.Lock()
	m.nc, m.span, m.reply = nc, span, req.Reply
	m.mu.Unlock()
	req.more = m
}

// end refuses the replies with more to follow of the request handled:
// its handler has returned.
func (m *more) end() {
	m.mu.Lock()
	m.nc, m.span, m.reply = nil, nil, ""
	m.mu.Unlock()
}
