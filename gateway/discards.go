package gateway

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/egress"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// discardLogInterval is the least time between two of the gateway's
// warnings that the capture stream's limits removed requests no worker
// answered; each warning gives the count since the previous one.
const discardLogInterval = 10 * time.Second

// discards counts the requests that the capture stream's limits removed
// before a worker answered them: requests that reached their deadline
// unanswered (counted no_answer by egress) when the stream no longer held
// their capture copy (its sequence below the stream's first sequence:
// discard-old at UDPGATE_STREAM_MAX_BYTES, UDPGATE_STREAM_MAX_AGE, or any
// other limit or purge), on a subject a durable group's consumer covers.
// No worker can take such a request any more, nor take it again after a
// crash. Each is counted by listener, on top of no_answer (a breakdown of
// it, so every balance of the counters holds as before), and a warning is
// logged at most once per logEvery with the count since the last one.
//
// It learns each exchange's stream sequence from the capture's
// acknowledgement (captured), and hears of each expiry from egress
// (expired); its own goroutine (run) then reads the stream's first
// sequence, at most once per egress sweep and only when captured requests
// expired. Safe for concurrent use.
type discards struct {
	js       jetstream.JetStream
	stream   string
	prefix   string
	durs     *durables
	log      *slog.Logger
	logEvery time.Duration
	portsMu  sync.RWMutex              // guards names and counts, which grow as listeners are added
	names    map[uint16]string         // listener name by port
	counts   map[uint16]*atomic.Uint64 // by listener port

	mu        sync.Mutex // guards slots, due, unchecked and checking
	slots     []capturedSlot
	mask      uint64
	due       []expiry // expired, captured, not checked against the stream yet
	unchecked uint64   // expiries not kept for the check: due was full
	checking  bool     // check has taken due and not counted it yet

	kick chan struct{} // buffered: due has something

	// Of run's goroutine only: what the next warning reports.
	unlogged map[uint16]uint64
	lastLog  time.Time
}

// capturedSlot is the stream sequence of the capture copy of the exchange
// seq, by the exchange's slot in the table.
type capturedSlot struct {
	seq, stream uint64
}

// expiry is an exchange that reached its deadline unanswered after its
// request was captured.
type expiry struct {
	port    uint16
	stream  uint64           // the stream sequence of its capture copy
	replier exchange.Replier // for its subject; nil on raw listeners
}

// maxDue bounds the expiries that wait for a reading of the stream, in
// table sizes: enough for every exchange to expire while a reading fails.
const maxDue = 4

func newDiscards(js jetstream.JetStream, stream, prefix string, durs *durables, size int, ls []Listener, log *slog.Logger) *discards {
	d := &discards{
		js: js, stream: stream, prefix: prefix, durs: durs, log: log, logEvery: discardLogInterval,
		names: map[uint16]string{}, counts: map[uint16]*atomic.Uint64{},
		slots: make([]capturedSlot, size), mask: uint64(size - 1),
		kick: make(chan struct{}, 1), unlogged: map[uint16]uint64{},
	}
	for _, l := range ls {
		port := uint16(l.Conn.LocalAddr().(*net.UDPAddr).Port)
		protocol := l.Protocol
		if protocol == "" {
			protocol = schemas.ProtocolRaw
		}
		d.addPort(port, schemas.Listener(port, protocol))
	}
	return d
}

// addPort counts the requests of the listener name on port from now on;
// a port served again keeps its count.
func (d *discards) addPort(port uint16, name string) {
	d.portsMu.Lock()
	defer d.portsMu.Unlock()
	d.names[port] = name
	if d.counts[port] == nil {
		d.counts[port] = new(atomic.Uint64)
	}
}

// counter returns the count of the listener on port, nil if none.
func (d *discards) counter(port uint16) *atomic.Uint64 {
	d.portsMu.RLock()
	defer d.portsMu.RUnlock()
	return d.counts[port]
}

func (d *discards) name(port uint16) string {
	d.portsMu.RLock()
	defer d.portsMu.RUnlock()
	return d.names[port]
}

// captured records that the capture copy of the exchange seq is stored at
// streamSeq; ingress calls it for each acknowledgement. Of two copies of
// one request, the later counts: a worker can take it while either is
// stored.
func (d *discards) captured(seq, streamSeq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &d.slots[seq&d.mask]
	switch {
	case s.seq < seq:
		*s = capturedSlot{seq: seq, stream: streamSeq}
	case s.seq == seq:
		s.stream = max(s.stream, streamSeq)
	}
	// An exchange older than the slot's: its acknowledgement came a
	// whole table later, and it is long expired.
}

// expired takes an exchange that egress counted no_answer, for the next
// check if its request was captured.
func (d *discards) expired(seq uint64, ex exchange.Exchange) {
	d.mu.Lock()
	s := d.slots[seq&d.mask]
	if s.seq != seq {
		d.mu.Unlock()
		return // not captured: a capture_gap, or its acknowledgement is late
	}
	if len(d.due) < maxDue*len(d.slots) {
		d.due = append(d.due, expiry{port: ex.Port, stream: s.stream, replier: ex.Replier})
	} else {
		d.unchecked++
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// count returns how many requests of the listener on port the capture's
// limits removed before a worker answered them.
func (d *discards) count(port uint16) uint64 {
	if c := d.counter(port); c != nil {
		return c.Load()
	}
	return 0
}

// run checks the expiries against the stream whenever there are some,
// at most once per egress sweep, and logs what it counted, until ctx
// ends; then it checks the last ones (for a second at most) and logs what
// it has not yet.
func (d *discards) run(ctx context.Context) {
	var flush <-chan time.Time // the next warning is due
	var flushTimer *time.Timer
	defer func() {
		if flushTimer != nil {
			flushTimer.Stop()
		}
		last, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		d.check(last)
		cancel()
		d.warn(time.Now())
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-flush:
			flush, flushTimer = nil, nil
		}
		wait := egress.DefaultSweep
		if !d.check(ctx) {
			wait = time.Second // the stream did not answer: try again later, the expiries kept
		}
		if flush == nil {
			if next := d.report(time.Now()); !next.IsZero() {
				flushTimer = time.NewTimer(time.Until(next))
				flush = flushTimer.C
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// report logs what was counted since the last warning if logEvery has
// passed since it; otherwise it returns when it will have (zero when
// there is nothing to log).
func (d *discards) report(now time.Time) time.Time {
	if len(d.unlogged) == 0 {
		return time.Time{}
	}
	if next := d.lastLog.Add(d.logEvery); !d.lastLog.IsZero() && now.Before(next) {
		return next
	}
	d.warn(now)
	return time.Time{}
}

// idle reports whether every expiry handed over so far has been checked.
func (d *discards) idle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.due) == 0 && !d.checking
}

// check reads the stream's first sequence and counts the expiries whose
// capture copy is below it. It reports false, keeping the expiries, when
// the stream could not be read.
func (d *discards) check(ctx context.Context) bool {
	d.mu.Lock()
	due, unchecked := d.due, d.unchecked
	d.due, d.unchecked, d.checking = nil, 0, true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.checking = false
		d.mu.Unlock()
	}()
	if unchecked > 0 {
		d.log.Warn("gateway: requests unanswered at their deadline were not checked against the capture stream's limits: too many while it could not be read",
			"requests", unchecked, "stream", d.stream)
	}
	if len(due) == 0 {
		return true
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := d.js.Stream(rctx, d.stream)
	if err != nil {
		d.log.Debug("gateway: reading the capture stream's first sequence", "stream", d.stream, "err", err)
		d.mu.Lock()
		d.due = append(due, d.due...)
		d.mu.Unlock()
		return false
	}
	first := s.CachedInfo().State.FirstSeq
	var view *durableView
	read := false
	for _, e := range due {
		if e.stream >= first {
			continue // still stored when it expired: no worker answered in time
		}
		if !read {
			view, read = d.durs.fresh(ctx), true
		}
		c := d.counter(e.port)
		if c == nil || !d.durable(view, e) {
			continue // only direct groups serve it: the capture was not its way to a worker
		}
		c.Add(1)
		d.unlogged[e.port]++
	}
	return true
}

// durable reports whether a durable group's consumer covers the subject
// of e's request, or whether that is not known (no reading of the
// consumers): a request is counted rather than left silent.
func (d *discards) durable(v *durableView, e expiry) bool {
	if v == nil {
		return true
	}
	var subject string
	switch r := e.replier.(type) {
	case *coap.Request:
		subject = schemas.CoAPSubject(d.prefix, e.port, r.Method, r.Segments)
	case *rpc.Call:
		subject = schemas.RPCSubject(d.prefix, e.port, r.Service, r.Method)
	default:
		subject = schemas.InSubject(d.prefix, e.port)
	}
	return slices.ContainsFunc(v.filters, func(f string) bool { return schemas.Match(f, subject) })
}

// warn logs the requests counted since the last warning, if any.
func (d *discards) warn(now time.Time) {
	if len(d.unlogged) == 0 {
		return
	}
	var n uint64
	var by []string
	for port, c := range d.unlogged {
		n += c
		by = append(by, d.name(port)+"="+strconv.FormatUint(c, 10))
	}
	slices.Sort(by)
	args := []any{"requests", n, "listeners", strings.Join(by, ","), "stream", d.stream}
	if !d.lastLog.IsZero() {
		args = append(args, "since", now.Sub(d.lastLog).Round(time.Second))
	}
	d.log.Warn("gateway: the capture stream's limits removed requests before any worker took them; they went unanswered (raise UDPGATE_STREAM_MAX_BYTES or UDPGATE_STREAM_MAX_AGE for the longest worker pause: docs/operations.md)", args...)
	clear(d.unlogged)
	d.lastLog = now
}
