// Package bench is udpgate's load generator: it sends requests to a udp://,
// coap:// or rpc:// target from many source sockets, or to a ws:// target
// on long-lived WebSocket connections, and measures what comes back:
// requests per second, latency percentiles, loss and errors. It is what
// `udpgate bench` runs, and the engine of `udpgate bench suite`.
//
// A run is closed-loop (Config.Concurrency requests in flight, each reply or
// loss releasing the next request) or open-loop (Config.Rate requests per
// second, sent on schedule whatever comes back, each latency measured from
// the time the request was due rather than sent, so that a slow target is
// not hidden by a generator that waits for it: coordinated omission). It
// ends after Config.Duration or Config.Count requests, whichever comes
// first, then waits up to Config.Timeout for the replies still due; a
// request without a reply by then is lost.
//
// Replies are matched to requests on the wire: an 8-byte request id before
// the payload of a udp:// request (an echo returns it; a reply that names
// no request answers the socket's only request in flight, if it has just
// one), the token of a CoAP request (8 bytes, a confirmable request whose
// message id is the socket's request number), the id of an RPC Call (over
// UDP or in a WebSocket message: a connection carries several calls in
// flight, their replies in any order).
// A CoAP socket is replaced after 65,536 requests, before its message ids
// wrap, since RFC 7252 forbids reusing one within 247 s; Config.Short
// replaces every socket after fewer.
package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/udpgate/udpgate/ws"
)

// Defaults of the Config fields left zero.
const (
	DefaultTimeout  = 2 * time.Second
	DefaultDuration = 10 * time.Second
	// DefaultOpenSockets is the number of sockets of an open-loop run.
	DefaultOpenSockets = 8
)

// Config describes a run. The zero value of each field has a meaning; Run
// needs only Target.
type Config struct {
	// Target is udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY],
	// rpc://HOST:PORT/SERVICE/METHOD or ws://HOST:PORT[/PATH]/SERVICE/METHOD
	// (wss:// too), as for `udpgate send`. A ws target's Calls go in
	// binary messages.
	Target string
	// Method is the CoAP method (GET if empty); other schemes ignore it.
	Method string
	// Payload is the datagram after the request id (udp), the CoAP
	// payload, or the RPC params (JSON when the method is known to the
	// client package, raw bytes otherwise). Run does not modify it.
	Payload []byte

	// Concurrency is the number of requests in flight in a closed loop
	// (1 if zero); ignored when Rate is set.
	Concurrency int
	// Rate, if positive, makes the run open-loop: requests are due at
	// this many per second, spread over the sockets in turn. A generator
	// that falls behind catches up in bursts of at most 128 requests, then
	// at twice the rate; every request due before the end of Duration is
	// sent, late if need be, until a tenth of Duration (a second at most)
	// after it.
	Rate float64
	// Duration bounds the sending time; Count bounds the number of
	// requests. With both zero, Duration is DefaultDuration.
	Duration time.Duration
	Count    int
	// Sockets is the number of source sockets in use at once. Zero means
	// one per request in flight (Concurrency) in a closed loop and
	// DefaultOpenSockets in an open loop. A closed loop spreads its
	// requests in flight evenly over the sockets.
	// For ws, the sockets are WebSocket connections, and a closed loop's
	// default is as few as the listener's default limit of calls in
	// flight per connection (ws.DefaultMaxInFlight, 64) allows; a call
	// beyond the listener's limit is answered RESOURCE_EXHAUSTED, which
	// counts as Failed.
	Sockets int
	// Short, if positive, replaces a socket by a fresh one (a new source
	// port) after it has sent this many requests.
	Short int
	// Warmup, in a closed loop, is a number of requests sent first on the
	// same sockets and not measured: the run's counts, latencies and
	// Duration begin with the first request after them. It brings a
	// target's state per client (caches, tables) to what long-lived
	// clients would have built. An open loop ignores it.
	Warmup int
	// Timeout is how long a request waits for its reply before it is
	// lost; DefaultTimeout if zero.
	Timeout time.Duration
	// NoReply sends without expecting replies (nothing is lost, nothing
	// answered): for a target that only stores what it receives. In a
	// closed loop each of the Concurrency senders sends as fast as it can.
	// Not for ws, whose listener answers every call.
	NoReply bool
	// TLS configures wss connections; nil verifies the listener's
	// certificate against the system's roots.
	TLS *tls.Config
	// Sources are the local addresses new sockets (ws: TCP connections)
	// bind to, in turn (with a port chosen by the system); nil lets the
	// system choose.
	Sources []netip.Addr
	// Progress, if not nil, is called about once a second during the
	// run, from a goroutine of Run's, with the counts so far.
	Progress func(Progress)
}

// Progress is a run's state so far.
type Progress struct {
	Elapsed                      time.Duration
	Sent, Answered, Lost, Errors int64
}

// Result is the outcome of a run. Sent = Answered + Failed + Lost: every
// request written got a good reply, an error reply, or none in time.
type Result struct {
	Target      string  `json:"target"`
	Mode        string  `json:"mode"` // "closed" or "open"
	Concurrency int     `json:"concurrency,omitempty"`
	TargetRate  float64 `json:"target_rate,omitempty"`
	Sockets     int     `json:"sockets"`
	// SocketsOpened counts every socket the run opened, replacements
	// included.
	SocketsOpened int64 `json:"sockets_opened"`
	// Elapsed runs from the first request to the end of sending or the
	// last reply, whichever is later.
	Elapsed time.Duration `json:"-"`
	Seconds float64       `json:"duration_s"`
	// Rate is Answered per second of Elapsed (Sent per second with
	// NoReply).
	Rate     float64 `json:"rate"`
	Sent     int64   `json:"sent"`
	Answered int64   `json:"answered"`
	// Failed counts error replies: CoAP 4.xx and 5.xx, RPC statuses other
	// than OK.
	Failed int64 `json:"failed"`
	Lost   int64 `json:"lost"`
	// Errors counts socket errors (an ICMP port unreachable, a failed
	// write or bind) and Failed replies.
	Errors int64 `json:"errors"`
	// Behind counts the requests of an open loop that were due before the
	// end but not sent, because the generator could not keep up (see
	// Config.Rate).
	Behind int64 `json:"behind,omitempty"`
	// FirstError is the first socket error, if any.
	FirstError string `json:"first_error,omitempty"`
	// Latency is over the answered requests (zero if none).
	Latency Latency `json:"latency_us"`
}

// Latency are latency percentiles (nearest rank, to within 1.6%) and the
// exact extremes. JSON has them in microseconds.
type Latency struct {
	Min, P50, P90, P99, P999, Max time.Duration
}

// MarshalJSON writes the percentiles in microseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return fmt.Appendf(nil, `{"min":%.1f,"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f}`,
		us(l.Min), us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max)), nil
}

// ErrTarget is wrapped by Run's error when Config.Target is not a target
// it can load: the caller's mistake rather than the network's.
var ErrTarget = errors.New("bad target")

// badTarget marks err as ErrTarget without changing its text.
type badTarget struct{ error }

func (badTarget) Is(target error) bool { return target == ErrTarget }
func (e badTarget) Unwrap() error      { return e.error }

// errStopped is returned by a send after the run stopped sending.
var errStopped = errors.New("bench: stopped")

// Run runs cfg until it ends or ctx is cancelled (the result then covers
// what was sent so far). It fails only when the configuration is wrong or
// no socket can be opened at all.
func Run(ctx context.Context, cfg Config) (Result, error) {
	t, err := parseTarget(cfg.Target, cfg.Method, cfg.Payload)
	if err != nil {
		return Result{}, badTarget{err}
	}
	var raddr *net.UDPAddr
	if t.ws == "" {
		if raddr, err = net.ResolveUDPAddr("udp", t.host); err != nil {
			return Result{}, badTarget{fmt.Errorf("bench: %s: %w", cfg.Target, err)}
		}
	} else if cfg.NoReply {
		return Result{}, badTarget{fmt.Errorf("bench: %s: a ws listener answers every call: NoReply is for UDP targets", cfg.Target)}
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if t.ws != "" && cfg.Sockets <= 0 && cfg.Rate <= 0 {
		// As few connections as the listener's calls in flight allow.
		cfg.Sockets = (cfg.Concurrency + ws.DefaultMaxInFlight - 1) / ws.DefaultMaxInFlight
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Duration <= 0 && cfg.Count <= 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Sockets <= 0 {
		cfg.Sockets = cfg.Concurrency
		if cfg.Rate > 0 {
			cfg.Sockets = DefaultOpenSockets
		}
	}
	if cfg.Rate <= 0 && cfg.Sockets > cfg.Concurrency {
		cfg.Sockets = cfg.Concurrency
	}
	r := &run{cfg: cfg, t: t, raddr: raddr, live: map[*sock]struct{}{}, stop: make(chan struct{}), finished: make(chan struct{})}
	if cfg.Rate > 0 || cfg.Warmup < 0 {
		cfg.Warmup = 0
	}
	r.warmLeft.Store(int64(cfg.Warmup))
	r.limit = t.codec.perSocket()
	if cfg.Short > 0 && (r.limit == 0 || cfg.Short < r.limit) {
		r.limit = cfg.Short
	}
	_, r.fallback = t.codec.(rawCodec)
	r.sweepEvery = min(max(cfg.Timeout/8, time.Millisecond), 20*time.Millisecond)
	r.slots = make([]*slot, cfg.Sockets)
	for i := range r.slots {
		r.slots[i] = &slot{r: r}
	}
	// Open the first socket before anything else, to report a target that
	// cannot be reached at all.
	r.start = time.Now()
	k, err := r.dial(r.slots[0])
	if err != nil {
		return Result{}, fmt.Errorf("bench: %s: %w", cfg.Target, err)
	}
	r.slots[0].cur = k

	var senders sync.WaitGroup
	if cfg.Duration > 0 && cfg.Warmup == 0 {
		r.end = cfg.Duration // with a warm-up, the timer set by beginMeasuring ends it
	}
	if cfg.Duration > 0 && cfg.Rate <= 0 && cfg.Warmup == 0 { // an open loop's pace stops it
		stopTimer := time.AfterFunc(cfg.Duration, r.halt)
		defer stopTimer.Stop()
	}
	stopCtx := context.AfterFunc(ctx, r.halt)
	defer stopCtx()
	progressDone := make(chan struct{})
	if cfg.Progress != nil {
		go r.progress(progressDone)
	} else {
		close(progressDone)
	}

	switch {
	case cfg.Rate > 0:
		senders.Go(r.pace)
	case cfg.NoReply:
		for i := range cfg.Concurrency {
			s := r.slots[i%len(r.slots)]
			senders.Go(func() {
				for r.claim() {
					r.sendOrCount(s, r.now())
				}
			})
		}
	default:
		for i := range cfg.Concurrency {
			r.next(r.slots[i%len(r.slots)])
		}
	}
	<-r.stop
	senders.Wait()
	r.waitSends()
	r.mu.Lock()
	if r.stopTimer != nil {
		r.stopTimer.Stop()
	}
	r.mu.Unlock()
	r.stopped.Store(int64(r.now()))
	for _, s := range r.slots {
		s.close()
	}
	// Every socket now drains: its reader sweeps what is overdue and
	// closes it once nothing is in flight. Bound the wait all the same.
	drained := make(chan struct{})
	go func() { r.readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(cfg.Timeout + time.Second):
		r.closeAll()
		<-drained
	}
	r.closers.Wait()
	close(r.finished)
	<-progressDone
	return r.result(), nil
}
