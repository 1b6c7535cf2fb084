package workers

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// The queueing bounds of a Direct instance's backlog, after CoDel as
// Facebook's wangle/Folly applies it to request queues: requests are
// "sloughed" while overloaded after CoDel's 5 ms target (Folly waits twice
// that; a shed request must be answered within 10 ms of its publish), and
// intervals are 100 ms. What makes an overload is udpgate's own (see
// queue).
const (
	// codelInterval is how long the backlog must keep falling behind
	// before the instance counts as overloaded, and the shortest window
	// over which the arrivals that keep it overloaded are counted.
	codelInterval = 100 * time.Millisecond
	// slough is how long a request may wait while the instance is
	// overloaded: the older ones are shed at once.
	slough = 5 * time.Millisecond
)

// queue is a Direct instance's backlog: the requests received and not yet
// started, at most max of them, for concurrency handlers whose calls take
// an estimated est (passed to each call). It is served first in first out
// while the handlers can start every request in time, and last in first
// out once they cannot (adaptive LIFO, as wangle/Folly and Dropbox's
// Bandaid do): while the backlog is behind, or the instance overloaded
// (below), the requests started are the newest, which have the most time
// left. Folly switches once a request has waited 5 ms; with deadlines to
// go by, first in first out, fair and with the shortest longest wait, is
// kept for as long as it serves every request in time. Requests are shed,
// oldest first (see stale):
//
//   - a request that cannot finish before its deadline, started now;
//   - while the backlog is behind: more requests wait than the handlers
//     can start, one every est/concurrency, before the oldest would have
//     to start; shedding the oldest keeps what can be served, so a burst
//     that the handlers work off in time loses nothing and a larger one
//     loses only its excess;
//   - while overloaded, any request that has waited slough. The
//     instance is overloaded once its backlog has kept falling behind
//     for codelInterval (requests keep arriving faster than the handlers
//     start them: a single burst does not), and stays so until a window
//     of codelInterval or est, whichever is longer, in which fewer
//     requests arrived than the handlers can start (concurrency per
//     est). Under a sustained overload the requests that cannot be
//     served are shed within slough of their arrival, not after waiting
//     most of their deadline; below the capacity, the backlog's waits
//     are left alone.
//
// A request without a deadline is never shed for time, and while it is
// the oldest, the requests behind it are shed only when a handler reaches
// them or the queue is full. A full queue sheds its oldest request to
// take a new one.
//
// Times are passed in, so that tests can drive the queue. It is safe for
// concurrent use.
type queue struct {
	concurrency int
	max         int
	// ready receives a value for each request pushed, as long as it has
	// room for one per handler, and is closed with the queue: a handler
	// that finds the queue empty waits for it.
	ready chan struct{}
	// arrivals counts the requests received, pushed or started at once
	// (see arrived).
	arrivals atomic.Uint64

	mu sync.Mutex // guards the fields below
	// ring holds the requests from the oldest, ring[head], to the
	// newest; it grows up to max.
	ring    []queued
	head, n int
	// behindSince is when the backlog began to fall behind, and
	// lastBehind when it last was; zero if never.
	behindSince, lastBehind time.Time
	// overloadedUntil is when the overload ends, unless a window of
	// arrivals extends it, or ends it earlier.
	overloadedUntil time.Time
	// windowStart is when the current window of arrivals began, and
	// windowArrivals the count of arrivals then.
	windowStart    time.Time
	windowArrivals uint64
	closed         bool
}

// queued is a request in the queue.
type queued struct {
	msg      *nats.Msg
	at       time.Time // when it was received
	deadline time.Time // its udpgate-deadline; zero if none
}

func newQueue(max, concurrency int) *queue {
	return &queue{
		concurrency: concurrency,
		max:         max,
		ready:       make(chan struct{}, concurrency),
		ring:        make([]queued, min(max, 64)),
	}
}

// push adds a request received at now. If the queue was full, it removes
// the oldest request and returns it, with true, to be shed. It must not
// be called after close.
func (q *queue) push(msg *nats.Msg, deadline, now time.Time) (evicted queued, full bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == q.max {
		evicted, full = q.popOldest(), true
	} else if q.n == len(q.ring) {
		q.grow()
	}
	q.ring[(q.head+q.n)%len(q.ring)] = queued{msg: msg, at: now, deadline: deadline}
	q.n++
	q.arrivals.Add(1)
	select {
	case q.ready <- struct{}{}:
	default: // a value per handler waits already
	}
	return evicted, full
}

// arrived counts a request received and started at once, without being
// pushed.
func (q *queue) arrived() {
	q.arrivals.Add(1)
}

// grow doubles the ring, up to max. q.mu must be held.
func (q *queue) grow() {
	ring := make([]queued, min(2*len(q.ring), q.max))
	for i := range q.n {
		ring[i] = q.ring[(q.head+i)%len(q.ring)]
	}
	q.ring, q.head = ring, 0
}

// popOldest removes and returns the oldest request. q.n must be positive
// and q.mu held.
func (q *queue) popOldest() queued {
	r := q.ring[q.head]
	q.ring[q.head] = queued{}
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	return r
}

// overloaded reports whether the instance is overloaded at now. q.mu must
// be held.
func (q *queue) overloaded(now time.Time) bool {
	return now.Before(q.overloadedUntil)
}

// behind reports whether, at now, the handlers cannot start every request
// that waits before the oldest must start to finish by its deadline: the
// oldest starts last once the queue builds up, and a handler frees every
// est/concurrency. q.n must be positive and q.mu held.
func (q *queue) behind(now time.Time, est time.Duration) bool {
	oldest := q.ring[q.head]
	if oldest.deadline.IsZero() || est <= 0 {
		return false
	}
	return q.drain(est) >= oldest.deadline.Sub(now)-est
}

// drain is how long the handlers take to start every request that waits.
// q.mu must be held.
func (q *queue) drain(est time.Duration) time.Duration {
	return time.Duration(q.n) * est / time.Duration(q.concurrency)
}

// window is the window over which arrivals are counted: codelInterval,
// or est if longer.
func window(est time.Duration) time.Duration {
	return max(codelInterval, est)
}

// observe updates the overload state at now: whether the backlog has kept
// falling behind, and, at the end of each window, whether more requests
// arrived in it than the handlers can start. q.mu must be held.
func (q *queue) observe(now time.Time, est time.Duration) {
	w := window(est)
	if elapsed := now.Sub(q.windowStart); elapsed >= w {
		arrivals := q.arrivals.Load()
		// More than concurrency per est arrived.
		hot := est > 0 && float64(arrivals-q.windowArrivals)*float64(est) > float64(q.concurrency)*float64(elapsed)
		q.windowStart, q.windowArrivals = now, arrivals
		switch {
		case !q.overloaded(now):
		case hot:
			// Until the end of the next window, and a little beyond:
			// the window ends at the first event after it.
			q.overload(now, w)
		default:
			q.overloadedUntil = now
		}
	}
	if q.n == 0 || !q.behind(now, est) {
		return
	}
	if q.lastBehind.IsZero() || now.Sub(q.lastBehind) > codelInterval {
		q.behindSince = now
	}
	q.lastBehind = now
	if now.Sub(q.behindSince) >= codelInterval && !q.overloaded(now) {
		q.overload(now, w)
	}
}

// overload makes the instance overloaded from now, for the window w of
// arrivals that starts now and a little beyond. q.mu must be held.
func (q *queue) overload(now time.Time, w time.Duration) {
	q.overloadedUntil = now.Add(2 * w)
	q.windowStart, q.windowArrivals = now, q.arrivals.Load()
}

// lifo reports whether the queue serves the newest request first at now:
// while overloaded or behind. q.n must be positive and q.mu held.
func (q *queue) lifo(now time.Time, est time.Duration) bool {
	return q.overloaded(now) || q.behind(now, est)
}

// take removes and returns the request to start at now: the oldest, or
// the newest while the backlog is behind or the instance overloaded. It
// returns false if the queue is empty. It sheds nothing: the caller checks
// the request's deadline.
func (q *queue) take(now time.Time, est time.Duration) (queued, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeLocked(now, est)
}

func (q *queue) takeLocked(now time.Time, est time.Duration) (queued, bool) {
	if q.n == 0 {
		return queued{}, false
	}
	q.observe(now, est)
	if !q.lifo(now, est) {
		return q.popOldest(), true
	}
	i := (q.head + q.n - 1) % len(q.ring)
	r := q.ring[i]
	q.ring[i] = queued{}
	q.n--
	return r, true
}

// wait blocks until a request can be taken, and takes it as take does,
// at the time now returns, with the estimate est returns. It returns false
// once the queue is closed and empty.
func (q *queue) wait(now func() time.Time, est func() time.Duration) (queued, bool) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			defer q.mu.Unlock()
			return q.takeLocked(now(), est())
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return queued{}, false
		}
		<-q.ready
	}
}

// stale removes and returns the oldest request if it must be shed at now
// (see queue), with true.
func (q *queue) stale(now time.Time, est time.Duration) (queued, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return queued{}, false
	}
	q.observe(now, est)
	oldest := q.ring[q.head]
	switch {
	case oldest.deadline.IsZero():
		return queued{}, false
	case cannotFinish(oldest.deadline, now, est),
		q.behind(now, est),
		q.overloaded(now) && now.Sub(oldest.at) >= slough:
		return q.popOldest(), true
	}
	return queued{}, false
}

// next returns when stale should be called next if nothing is pushed or
// taken before: when the oldest request will have waited slough (while
// overloaded), or the backlog will be behind. It returns the zero Time if
// the queue is empty or its oldest request has no deadline.
func (q *queue) next(now time.Time, est time.Duration) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 || q.ring[q.head].deadline.IsZero() {
		return time.Time{}
	}
	oldest := q.ring[q.head]
	// Behind once deadline - now - est <= drain; with est zero, at the
	// deadline.
	at := oldest.deadline.Add(-est - q.drain(est))
	if q.overloaded(now) {
		if s := oldest.at.Add(slough); s.Before(at) {
			at = s
		}
	}
	return at
}

// len returns how many requests wait.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// close wakes the waiting takers: wait returns what the queue holds, then
// false. Nothing may be pushed after it.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	close(q.ready)
	q.mu.Unlock()
}
