package workers

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// The handler estimate: how long a Server's handler takes, which decides
// whether a request can still finish before its deadline.
const (
	// estimateWindow is how many recent handler calls the estimate is
	// taken from.
	estimateWindow = 64
	// estimatePercentile is the percentile of those calls' times that is
	// the estimate.
	estimatePercentile = 95
	// estimateTTL is how long a handler call counts. When every request is
	// shed, no call ends to correct an estimate that has grown too large;
	// it is forgotten estimateTTL after the last call, and requests are
	// started again.
	estimateTTL = 10 * time.Second
)

// estimate is a Server's estimate of its handler's time: the 95th
// percentile of the last 64 handler calls that ended before their
// request's deadline, among those that ended in the last 10 s; zero, for
// no estimate, when there are none.
//
// A high percentile, not a mean (an EWMA): a request started with less
// time left than a mean handler call fails half the time, and a mean plus
// deviations (as TCP's retransmission timeout) is pulled far above every
// call by a handler whose times are bimodal (a cache hit and a miss),
// which would shed requests that have time enough. A percentile is never
// above the calls it is taken from. Being cautious costs little: a request
// shed is replaced by a newer one, with more time left (the backlog serves
// the newest first; a durable consumer's next message is newer).
//
// Only calls that ended before their deadline count: a call cut short by
// the deadline says only that the handler needed more time than it had,
// and a downstream outage that makes every call time out would otherwise
// push the estimate to the whole deadline and shed every request, even
// after the outage ends.
//
// It is safe for concurrent use; its zero value has no estimate.
type estimate struct {
	mu   sync.Mutex                    // guards took, at and next
	took [estimateWindow]time.Duration // the handler times
	at   [estimateWindow]time.Duration // when each call ended (see monotonic); zero for none
	next int                           // the slot to overwrite next

	cur  atomic.Int64 // the estimate, in nanoseconds
	last atomic.Int64 // when the newest call ended (monotonic); zero if none
}

// epoch is the origin of monotonic times.
var epoch = time.Now()

// monotonic returns how long ago the package was initialised, from the
// monotonic clock: times of handler calls that a wall clock step does not
// move.
func monotonic() time.Duration {
	return max(time.Since(epoch), 1)
}

// record adds a handler call that took took and ended at now (monotonic).
func (e *estimate) record(took, now time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.took[e.next], e.at[e.next] = took, now
	e.next = (e.next + 1) % estimateWindow
	// The k largest of the n calls within the TTL: the percentile is the
	// k-th. k is at most topMax for estimateWindow calls.
	const topMax = estimateWindow*(100-estimatePercentile)/100 + 1
	var top [topMax]time.Duration // descending
	n := 0
	for i, at := range e.at {
		if at == 0 || now-at > estimateTTL {
			continue
		}
		n++
		d := e.took[i]
		if d <= top[topMax-1] {
			continue
		}
		j := topMax - 1
		for ; j > 0 && top[j-1] < d; j-- {
			top[j] = top[j-1]
		}
		top[j] = d
	}
	k := n - (estimatePercentile*n+99)/100 + 1 // n - ceil(0.95 n) + 1
	e.cur.Store(int64(top[k-1]))
	e.last.Store(int64(now))
}

// get returns the estimate at now (monotonic), or zero if no call has
// ended within estimateTTL.
func (e *estimate) get(now time.Duration) time.Duration {
	if last := time.Duration(e.last.Load()); last == 0 || now-last > estimateTTL {
		return 0
	}
	return time.Duration(e.cur.Load())
}

// cannotFinish reports whether a request with deadline cannot finish
// before it if it starts at now, for a handler estimated to take est: the
// deadline is set and less than est is left (or nothing).
func cannotFinish(deadline, now time.Time, est time.Duration) bool {
	if deadline.IsZero() {
		return false
	}
	left := deadline.Sub(now)
	return left <= 0 || left < est
}

// parseDeadline returns the deadline in a request's headers, as
// parseRequest does, without the rest.
func parseDeadline(h nats.Header) time.Time {
	v := h.Get(schemas.HeaderDeadline)
	if v == "" {
		return time.Time{}
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// rpcOverload is the reply to a shed RPC call.
var rpcOverload = nats.Header{
	schemas.HeaderRPCStatus: {strconv.Itoa(int(RPCResourceExhausted))},
	schemas.HeaderRPCError:  {"overloaded: retry later"},
}

// coapOverload is the reply to a shed CoAP request for one Max-Age: 5.03
// Service Unavailable, and the Max-Age option, which RFC 7252 §5.9.3.4
// makes the seconds after which the client may retry.
type coapOverload struct {
	maxAge int64
	header nats.Header
}

// overload builds the replies to shed requests. It keeps the last CoAP one
// built, since its Max-Age follows the estimate, so that shedding does not
// allocate while the estimate stays within the same second. It is safe for
// concurrent use; the headers it returns are shared and must not be
// changed.
type overload struct {
	coap atomic.Pointer[coapOverload]
}

// header returns the headers of the reply to a shed request whose headers
// are h, for a handler estimated to take est, or nil if the request's
// protocol has no status for it (raw: the request is dropped unanswered).
func (o *overload) header(h nats.Header, est time.Duration) nats.Header {
	var protocol string
	switch h.Get(schemas.HeaderType) {
	case schemas.TypeCoAP:
		protocol = schemas.ProtocolCoAP
	case schemas.TypeRPC:
		protocol = schemas.ProtocolRPC
	default:
		_, _, protocol, _ = schemas.ParseSource(h.Get(schemas.HeaderSource))
	}
	switch protocol {
	case schemas.ProtocolRPC:
		return rpcOverload
	case schemas.ProtocolCoAP:
		// Seconds until a retry is sensible: a handler call's time,
		// rounded up, at least 1.
		maxAge := max(int64((est+time.Second-1)/time.Second), 1)
		if c := o.coap.Load(); c != nil && c.maxAge == maxAge {
			return c.header
		}
		c := &coapOverload{maxAge: maxAge, header: nats.Header{
			schemas.HeaderCoAPCode:   {string(ServiceUnavailable)},
			schemas.HeaderCoAPMaxAge: {strconv.FormatInt(maxAge, 10)},
		}}
		o.coap.Store(c)
		return c.header
	}
	return nil
}
