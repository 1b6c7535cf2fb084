// Package workers is udpgate's worker SDK: it turns the gateway's request
// messages into calls of a Handler, and the handler's outcome into a reply
// (and, for a durable group, a JetStream acknowledgement).
//
// A worker is a Handler run by a Server; ListenAndServe is the one-call
// start. Every Server with the same Group is an instance of one group, and
// the instances of a group share its requests; two groups each see every
// request. A handler reads the Request and writes its answer to a
// ResponseWriter, as a net/http handler does; the SDK, not the handler,
// publishes the reply and acks, naks and terms.
//
// # Delivery
//
// A Direct group (the default) is a core NATS queue subscription on its
// subjects, the queue named after the group: each request reaches one
// instance at once, and the reply is a publish to the request's NATS reply
// subject, as msg.Respond does. Nothing is acknowledged; a request an
// instance dies with is retried by the client (the gateway publishes a
// retransmitted CoAP CON again). An instance holds at most Backlog
// requests waiting for its Concurrency handlers, its backlog, which it
// serves newest first when it cannot serve them all in time and sheds from
// as described under Overload; when Backlog wait, a new request makes it
// drop its oldest, and Stats.Dropped counts them. Stopping, it drains its subscriptions first
// (the other instances take what comes next) and handles what it holds.
//
// A Durable group is one JetStream pull consumer of the capture stream,
// the durable named after the group, which every instance binds to. A
// request is acknowledged only after its reply is published, so one whose
// instance dies is redelivered to another; requests wait in the stream
// while every instance is busy. Stopping, it asks for no more requests,
// handles what its outstanding fetches still bring until JetStream ends
// them (at most a second), then cancels its running handlers and naks
// their requests, which the other instances take at once: nothing is left
// to wait for the consumer's AckWait.
//
// # Outcomes
//
// When Handle returns, the SDK maps the outcome to a reply and, for a
// Durable group, an acknowledgement, in this order of precedence:
//
//   - Handle returned nil without writing (no Write call, no reply header):
//     no reply is published (and the request is acked). Observer groups,
//     which must never answer, are written this way.
//   - The request's deadline (udpgate-deadline) has passed: if it passed
//     before the handler was called, the handler is not called; if it
//     passed before the handler returned (in any other way than above), its
//     reply or error is dropped. Nothing is published (and the request is
//     acked), counted Expired: the gateway has closed the exchange, so a
//     late reply or a redelivery would serve no one.
//   - Durable: Handle returned an error after the instance began to shut
//     down, its context cancelled once the fetches it had outstanding when
//     Serve's context was cancelled have ended (see Server.Serve): the
//     request is nak'd, and another instance of the group takes it at once
//     (counted Retried).
//   - Handle returned an error wrapping ErrRetry: Durable, the request is
//     nak'd and JetStream redelivers it at once (Retried), unless this was
//     the consumer's last delivery (MaxDeliver): then it fails as below, so
//     the gateway hears of it before the deadline. Direct, nothing is
//     published (Retried): the client's retry is the redelivery.
//   - Handle returned any other error, or panicked: a reply with
//     udpgate-status "error" and an empty body is published (and the
//     request is termed, never redelivered), counted Failed. The error
//     itself never crosses NATS; it is logged at Debug level, a panic at
//     Error level.
//   - Handle returned nil after writing a body (any Write call, even empty)
//     or setting a reply header: the reply is published with the handler's
//     headers (then the request is acked), counted Replied. A reply
//     without udpgate-status means "ok".
//
// The handler of a raw request may send replies with more to follow
// before that final one, at once, with Request.ReplyMore; they are not
// counted apart, and the outcome above is the request's.
//
// Before calling Handle, the SDK skips a request whose deadline has
// passed, as above, and sheds one that cannot finish before it or that
// waited too long in an overloaded instance: the handler is not called,
// the request is answered with its protocol's overload status (and
// acked), counted Shed, as described under Overload.
//
// A request without a reply subject cannot be answered. It is still
// handled; if the handler returns nil without writing, nothing happens,
// but if the handler answers or fails, the reply is dropped (a Durable
// request is termed), counted Failed, and the reason is logged at Debug
// level. Other malformed headers (deadline, addresses, ce-source, ce-time,
// CoAP options) leave the matching Request field zero: a bad deadline
// means no deadline.
//
// In a Durable group, a handler that runs longer than half the consumer's
// AckWait gets "in progress" acknowledgements every AckWait/2, so
// JetStream does not redeliver a request whose handler is alive. A Durable
// Server fetches requests only for its idle handlers, so every request it
// holds is being handled: requests that wait for a handler wait in the
// stream, where no AckWait runs for them and any instance of the group can
// take them. A request whose deadline passes while it waits is acked
// unhandled when it is fetched (counted Expired, as above).
//
// Nothing is logged per request at Info level; Server.Stats counts outcomes.
//
// # Overload
//
// A Server spends no handler call on a request that cannot finish before
// its deadline. It keeps an estimate of its handler's time: the 95th
// percentile of its last 64 handler calls that ended before their
// deadline, in the last 10 seconds (none before the first such call). A
// request that has less time left than the estimate when a handler would
// start it is shed: the handler is not called, and the request is answered
// at once with its protocol's overload status, CoAP 5.03 Service
// Unavailable with Max-Age (the estimate in whole seconds, rounded up, at
// least 1: when a retry is sensible) or RPC RESOURCE_EXHAUSTED
// (RPCResourceExhausted); a raw request, whose reply has no status, is
// dropped unanswered, and the gateway answers nothing at its deadline, as
// before. A Durable group then acks the request: a nak would bring it back,
// later still. Stats.Shed counts the requests shed. A request whose
// deadline has already passed is not answered (Expired): the gateway has
// answered it.
//
// A Durable group fetches requests only for idle handlers, so requests
// wait in the stream, oldest first, and the deadline is all there is to
// check. A Direct instance holds the requests that find every handler busy
// in its backlog. The backlog is behind when more requests wait than the
// handlers can start (one every estimate/Concurrency) before the oldest
// must start to finish in time. The instance is overloaded once its
// backlog has kept falling behind for 100 ms (requests keep arriving
// faster than they are started, which one burst does not do), and until a
// window of 100 ms or the estimate, whichever is longer, in which fewer
// requests arrived than its handlers can start. It serves its backlog
// first in first out while that serves every request in time, and newest
// first while the backlog is behind or the instance overloaded (adaptive
// LIFO, as Facebook's wangle/Folly and Dropbox's Bandaid do): under
// overload the requests started are those with the most time left. It
// sheds the oldest requests of its backlog as soon as they cannot be
// served in time:
//
//   - a request that cannot finish before its deadline, as above;
//   - while the backlog is behind, the oldest, until it is not: a burst
//     that the handlers work off in time loses nothing, a larger one only
//     its excess;
//   - while the instance is overloaded, every request that has waited
//     5 ms (a CoDel-like bound on queueing time, CoDel's target): under
//     a sustained overload the requests that will not be served are
//     answered within about 10 ms of their arrival, not near their
//     deadline.
//
// A request without a deadline is never shed for time. The figures are in
// the project's docs/reliability.md.
//
// # CoAP
//
// The gateway publishes a request from a coap listener on the subject
// PREFIX.in.PORT.METHOD.SEGMENT... (schemas.CoAPSubject), with the request's
// payload as the body, its request line (udpgate-coap-request) and options
// in headers. The SDK parses those into Request.CoAP (nil for other
// protocols): method, decoded path segments and query options,
// Content-Format, Accept, and from the datagram head the token, message
// type and ID. A handler answers with a CoAPResponse, which sets
// the response code (2.05 Content if it sets none), Content-Format,
// Max-Age, ETag and Location options, and writes the payload. A handler
// error or panic makes the gateway answer 5.00 Internal Server Error.
//
// A Mux routes CoAP requests by method and path, as net/http's ServeMux
// does: patterns such as "GET /items/{id}" or "/files/{path...}", the most
// specific pattern first, 4.04 and 4.05 answered by the Mux itself.
// Mux.Subjects gives the subjects of its patterns, so that a group
// receives only the requests it serves (and the Mux never answers 4.04 or
// 4.05: unless another group serves them, the gateway answers the other
// requests 5.04 at their deadline; a group that subscribes to every CoAP
// request of the port, PREFIX.in.PORT.>, gets them all and answers them):
//
//	mux := workers.NewMux()
//	mux.RouteFunc("GET /items/{id}", getItem)
//	mux.RouteFunc("POST /items", addItem)
//	srv := &workers.Server{
//		NATS:     nc,
//		Group:    "items",
//		Subjects: mux.Subjects(schemas.DefaultPrefix, 5683),
//		Handler:  mux,
//	}
//
// Middleware is a func(Handler) Handler, as in net/http: it wraps a Mux, or
// the handler of one pattern, with no support needed from the SDK.
//
// # Tracing
//
// The gateway traces a share of the requests (UDPGATE_TRACE_SAMPLE) and
// sends each traced request's trace context with it, in the W3C
// traceparent and tracestate headers. A Server continues that trace: it
// runs the handler of a traced request in a span of its own ("worker
// GROUP", kind consumer, a child of the gateway's span), made by
// Server.TracerProvider or OpenTelemetry's global provider, and passes
// the span on the handler's context, so that handler code starts child
// spans with it (trace.SpanFromContext(ctx), or any instrumented client
// given ctx). The span records the outcome (udpgate.outcome: replied,
// no_reply, failed, retried, expired or shed, as Stats counts them) and
// the handler's error. Every reply to a traced request carries the span's
// context in its own traceparent, so that the gateway's span for sending
// it is the span's child. An untraced request (no traceparent) gets no
// span and costs nothing more; with no provider set, the global one does
// nothing, and the handler's context and the reply carry the request's
// context as it came. docs/tracing.md lists every span.
package workers

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrRetry is returned, wrapped or not, by a handler that wants the request
// redelivered later, for example when a resource it needs is briefly
// unavailable. Redelivery stops after the consumer's MaxDeliver attempts.
var ErrRetry = errors.New("workers: retry")

// Request is one request datagram as a worker sees it. Each Request, its
// Body and its Header belong to the one Handle call they are passed to,
// which may keep them after it returns.
type Request struct {
	// ID is the correlation id of the exchange (ce-id).
	ID string
	// Subject is the request's subject, for example udpgate.in.9000.
	Subject string
	// Reply is the subject the reply goes to: the message's reply subject
	// (direct) or its udpgate-reply header (durable). Empty if missing,
	// in which case no reply can be published.
	Reply string
	// Node is the gateway node that read the datagram, and Listener its
	// listener, PORT/PROTOCOL, for example "9000/raw", both from
	// ce-source (udpgate://NODE/PORT/PROTOCOL).
	Node, Listener string
	// Protocol is the PROTOCOL part of Listener, for example "raw"; empty if
	// ce-source is malformed.
	Protocol string
	// Port is the PORT part of Listener; zero if ce-source is malformed.
	Port uint16
	// Remote is the client's address (udpgate-remote); Local is the address
	// the datagram was sent to (udpgate-local). Either is the zero AddrPort
	// if its header is missing or malformed.
	Remote, Local netip.AddrPort
	// Received is when the gateway read the datagram: ce-time on an
	// imported request, else, for a durable group, when the capture
	// stream stored it; zero for a live request to a direct group.
	Received time.Time
	// Deadline is the time after which no reply is sent (udpgate-deadline);
	// zero if missing or malformed. The handler's context ends at Deadline.
	Deadline time.Time
	// Body is the datagram; for a CoAP request, its payload; for an RPC
	// call, its params.
	Body []byte
	// Header holds every header of the request message as received.
	Header nats.Header
	// Delivery is the delivery attempt of a durable group, 1 on first
	// delivery, from the JetStream metadata; zero for a direct group.
	Delivery uint64
	// CoAP holds the CoAP fields of a request from a coap listener (its
	// Protocol or its ce-type says so); nil for other protocols.
	CoAP *CoAPRequest
	// RPC holds the envelope fields of a call from an rpc listener; nil for
	// other protocols. Body is the call's params.
	RPC *RPCRequest
	// Pattern is the Mux pattern that matched the request, for example
	// "GET /items/{id}"; empty if no Mux routed it.
	Pattern string

	pathValues []pathValue // set by a Mux or SetPathValue
	more       *more       // set by the Server for the Handle call: ReplyMore
}

type pathValue struct{ name, value string }

// PathValue returns the value of the wildcard name in the Mux pattern that
// matched the request: the decoded segment for {name}, the decoded
// segments joined by "/" for {name...}. It returns "" if the pattern has
// no such wildcard or no Mux routed the request.
func (r *Request) PathValue(name string) string {
	for _, v := range r.pathValues {
		if v.name == name {
			return v.value
		}
	}
	return ""
}

// SetPathValue sets the value PathValue returns for name, for example to
// call a handler in a test without a Mux.
func (r *Request) SetPathValue(name, value string) {
	for i, v := range r.pathValues {
		if v.name == name {
			r.pathValues[i].value = value
			return
		}
	}
	r.pathValues = append(r.pathValues, pathValue{name, value})
}

// ResponseWriter builds the reply to one request. It is not safe for
// concurrent use and is valid only until Handle returns.
type ResponseWriter interface {
	// Header returns the reply's headers, for example to set
	// schemas.HeaderStatus. Setting a header makes a reply, even with an
	// empty body.
	Header() nats.Header
	// Write appends p to the reply body. It never fails. Any call, even
	// with an empty p, makes a reply.
	Write(p []byte) (int, error)
}

// Handler answers requests. Handle is called concurrently from several
// goroutines, so it must be safe for concurrent use. Its context ends at
// the request's deadline and, Durable, when the Server stops (once the
// fetches it had outstanding have ended; see Server.Serve); see the
// package documentation for how its outcome becomes a reply and an
// acknowledgement.
type Handler interface {
	Handle(ctx context.Context, w ResponseWriter, r *Request) error
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, w ResponseWriter, r *Request) error

// Handle calls f(ctx, w, r).
func (f HandlerFunc) Handle(ctx context.Context, w ResponseWriter, r *Request) error {
	return f(ctx, w, r)
}

// response is the ResponseWriter the Server passes to handlers. A handler
// goroutine reuses one for every request it handles: the reply is
// published, and nats.go has copied it, before the next request.
type response struct {
	header nats.Header // allocated on the first Header call, then kept
	body   []byte
	wrote  bool // Write was called
	more   more // the replies with more to follow of the request handled
}

// maxKeptBody bounds the reply buffer a response keeps between requests.
const maxKeptBody = 64 << 10

// reset readies w for the next request, keeping its memory.
func (w *response) reset() {
	clear(w.header)
	w.body = w.body[:0]
	if cap(w.body) > maxKeptBody {
		w.body = nil // one large reply does not pin its memory
	}
	w.wrote = false
}

func (w *response) Header() nats.Header {
	if w.header == nil {
		w.header = make(nats.Header)
	}
	return w.header
}

func (w *response) Write(p []byte) (int, error) {
	w.wrote = true
	w.body = append(w.body, p...)
	return len(p), nil
}

// answered reports whether the handler produced a reply.
func (w *response) answered() bool {
	return w.wrote || len(w.header) > 0
}
