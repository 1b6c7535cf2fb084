package bench

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpgate/udpgate/client"
)

// run is the state of one Run.
type run struct {
	cfg        Config
	t          target
	raddr      *net.UDPAddr
	limit      int  // requests per socket before it is replaced; 0: none
	fallback   bool // an unmatched reply answers a socket's only request
	sweepEvery time.Duration
	slots      []*slot

	start    time.Time
	end      time.Duration // 0: no time limit
	stopOnce sync.Once
	stop     chan struct{} // closed by halt: no more requests
	finished chan struct{} // closed when Run is done with the sockets
	stopped  atomic.Int64  // when sending stopped, since start
	last     atomic.Int64  // the latest reply, since start

	claimed                                    atomic.Int64
	sending                                    atomic.Int64 // claims not yet ended by sendOrCount
	warmLeft                                   atomic.Int64 // warm-up requests still to send
	measured                                   atomic.Int64 // when measuring began, since start
	stopTimer                                  *time.Timer  // closed loop with a warm-up: set when measuring begins; guarded by mu
	ids                                        atomic.Uint64
	sent, answered, failed, lost, errs, behind atomic.Int64
	opened                                     atomic.Int64
	srcNext                                    atomic.Uint64

	readers  sync.WaitGroup
	closers  sync.WaitGroup // WebSocket connections closing, with a close frame each
	mu       sync.Mutex     // guards live, hist and firstErr
	live     map[*sock]struct{}
	hist     Histogram
	firstErr error
}

func (r *run) now() time.Duration { return time.Since(r.start) }

// halt stops the run's sending; it is idempotent.
func (r *run) halt() { r.stopOnce.Do(func() { close(r.stop) }) }

func (r *run) halting() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// claim reports whether another request may be sent, and halts the run
// when none may. A true claim must be followed by sendOrCount, which ends
// it: Run closes the sockets only once no claimed request is still being
// sent, so that a run with a Count sends exactly that many.
func (r *run) claim() bool {
	r.sending.Add(1) // before the checks: a claim that passes is seen by Run
	if r.halting() {
		r.sending.Add(-1)
		return false
	}
	// An open loop's pace ends it at its duration by the due times.
	closedEnd := r.end > 0 && r.cfg.Rate <= 0 && r.now() >= r.end
	if closedEnd || (r.cfg.Count > 0 && r.claimed.Add(1) > int64(r.cfg.Count+r.cfg.Warmup)) {
		r.sending.Add(-1)
		r.halt()
		return false
	}
	return true
}

// waitSends waits until no claimed request is still being sent.
func (r *run) waitSends() {
	for r.sending.Load() > 0 {
		time.Sleep(100 * time.Microsecond)
	}
}

func (r *run) noteErr(err error) {
	r.errs.Add(1)
	r.mu.Lock()
	if r.firstErr == nil {
		r.firstErr = err
	}
	r.mu.Unlock()
}

// next sends a closed loop's next request on s, if the run is not over. A
// request that cannot be sent is counted and the next one tried, so each
// of the Concurrency chains of requests lives until the run ends.
func (r *run) next(s *slot) {
	for r.claim() {
		if r.sendOrCount(s, r.now()) {
			return
		}
	}
}

// sendOrCount sends a request due at at on s, counting an error.
func (r *run) sendOrCount(s *slot, at time.Duration) bool {
	defer r.sending.Add(-1)
	err := s.send(at)
	if err != nil && !errors.Is(err, errStopped) {
		r.noteErr(err)
	}
	return err == nil
}

// pace is an open loop's sender: request i is due at i/Rate seconds, on
// slot i modulo the sockets. It sleeps until a request is due and then
// sends every request that is. When it falls behind (the machine did not
// run it in time) it catches up at most maxBurst requests at once, then at
// twice the rate (a token bucket), rather than all at once: a burst of the
// whole backlog would overflow the target's socket buffer and turn the
// generator's stall into the target's loss. Latency still counts from each
// request's due time. With a Duration, the requests due before its end are
// sent, late if need be, for up to a tenth of it (a second at most) after
// the end; those still unsent then are counted as Behind.
func (r *run) pace() {
	const maxBurst = 128
	interval := float64(time.Second) / r.cfg.Rate
	tokens, last := float64(maxBurst), r.now()
	grace := min(r.end/10, time.Second)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	sleep := func(d time.Duration) {
		timer.Reset(d)
		select {
		case <-timer.C:
		case <-r.stop:
		}
	}
	for i := 0; ; {
		now := r.now()
		tokens = min(maxBurst, tokens+2*float64(now-last)/interval)
		last = now
		due := time.Duration(float64(i) * interval)
		switch {
		case due > now && !r.halting():
			sleep(due - now)
			continue
		case tokens < 1 && !r.halting():
			sleep(time.Duration(interval / 2))
			continue
		}
		if r.end > 0 && (due >= r.end || now >= r.end+grace) {
			// Every request due before the end is sent, late if need be,
			// unless the generator is still behind after the grace time.
			if want := int64(math.Ceil(float64(r.end) / interval)); want > int64(i) {
				r.behind.Store(want - int64(i))
			}
			r.halt()
			return
		}
		if !r.claim() {
			return
		}
		r.sendOrCount(r.slots[i%len(r.slots)], due)
		tokens--
		i++
	}
}

// progress reports the counts every second until the run is finished.
func (r *run) progress(done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			r.cfg.Progress(Progress{
				Elapsed: r.now(), Sent: r.sent.Load(), Answered: r.answered.Load(),
				Lost: r.lost.Load(), Errors: r.errs.Load(),
			})
		case <-r.finished:
			return
		}
	}
}

// source returns the local address of the next socket (Config.Sources in
// turn), or the zero Addr to let the system choose.
func (r *run) source() netip.Addr {
	n := len(r.cfg.Sources)
	if n == 0 {
		return netip.Addr{}
	}
	return r.cfg.Sources[(r.srcNext.Add(1)-1)%uint64(n)]
}

// dial opens a socket connected to the target (a WebSocket connection
// for ws) and starts its reader.
func (r *run) dial(s *slot) (*sock, error) {
	if r.t.ws != "" {
		return r.dialWS(s)
	}
	var laddr *net.UDPAddr
	if a := r.source(); a.IsValid() {
		laddr = &net.UDPAddr{IP: a.AsSlice(), Zone: a.Zone()}
	}
	c, err := net.DialUDP("udp", laddr, r.raddr)
	if err != nil {
		return nil, err
	}
	r.opened.Add(1)
	k := &sock{r: r, slot: s, conn: c, base: uint16(rand.Uint32())}
	if r.cfg.NoReply {
		return k, nil
	}
	if r.cfg.Short == 0 {
		c.SetReadBuffer(1 << 20) // best effort: replies to an open loop come in bursts
	}
	k.pending = make(map[uint64]pend, max(r.cfg.Concurrency/len(r.slots), 1))
	r.mu.Lock()
	r.live[k] = struct{}{}
	r.mu.Unlock()
	r.readers.Add(1)
	go k.read()
	return k, nil
}

// wsDialTimeout bounds the opening of a WebSocket connection, unless
// Config.Timeout is longer.
const wsDialTimeout = 10 * time.Second

// dialWS opens a WebSocket connection to the target's listener and starts
// its reader.
func (r *run) dialWS(s *slot) (*sock, error) {
	ctx, cancel := context.WithTimeout(context.Background(), max(r.cfg.Timeout, wsDialTimeout))
	defer cancel()
	c, err := client.DialWS(ctx, r.t.ws, client.WSOptions{LocalAddr: r.source(), TLS: r.cfg.TLS})
	if err != nil {
		return nil, err
	}
	r.opened.Add(1)
	k := &sock{r: r, slot: s, ws: c, pending: make(map[uint64]pend, max(r.cfg.Concurrency/len(r.slots), 1))}
	r.mu.Lock()
	r.live[k] = struct{}{}
	r.mu.Unlock()
	r.readers.Add(1)
	go k.readWS()
	return k, nil
}

// closeAll closes every socket still open, ending their readers.
func (r *run) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.live {
		k.close()
	}
}

func (r *run) result() Result {
	res := Result{
		Target:        r.cfg.Target,
		Mode:          "closed",
		Concurrency:   r.cfg.Concurrency,
		Sockets:       r.cfg.Sockets,
		SocketsOpened: r.opened.Load(),
		Sent:          r.sent.Load(),
		Answered:      r.answered.Load(),
		Failed:        r.failed.Load(),
		Lost:          r.lost.Load(),
		Errors:        r.errs.Load(),
		Behind:        r.behind.Load(),
	}
	if r.cfg.Rate > 0 {
		res.Mode, res.TargetRate, res.Concurrency = "open", r.cfg.Rate, 0
	}
	res.Elapsed = time.Duration(max(r.stopped.Load(), r.last.Load()) - r.measured.Load())
	res.Seconds = res.Elapsed.Seconds()
	if res.Elapsed > 0 {
		n := res.Answered
		if r.cfg.NoReply {
			n = res.Sent
		}
		res.Rate = float64(n) / res.Elapsed.Seconds()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.firstErr != nil {
		res.FirstError = r.firstErr.Error()
	}
	res.Latency = r.hist.Latency()
	return res
}

// slot is one of the run's Sockets: the socket it currently sends on,
// replaced by a fresh one every limit requests.
type slot struct {
	r      *run
	mu     sync.Mutex // guards cur, closed and the writes on cur
	cur    *sock
	closed bool
	wbuf   []byte
}

// send sends one request due at at (since the run's start) on the slot's
// socket, opening a new one first if it has sent its share.
func (s *slot) send(at time.Duration) error {
	r := s.r
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errStopped
	}
	k := s.cur
	if k == nil || (r.limit > 0 && k.n >= r.limit) || k.closed.Load() {
		if k != nil {
			k.retire()
			s.cur = nil
		}
		var err error
		if k, err = r.dial(s); err != nil {
			return err
		}
		s.cur = k
	}
	id := r.ids.Add(1)
	s.wbuf = r.t.codec.request(s.wbuf[:0], id, int(k.base)+k.n)
	warm := r.cfg.Warmup > 0 && r.warmLeft.Add(-1) >= 0
	if r.cfg.Warmup > 0 && !warm && r.measured.Load() == 0 {
		r.beginMeasuring()
	}
	if !r.cfg.NoReply {
		k.mu.Lock()
		k.pending[id] = pend{at: at, warm: warm}
		k.mu.Unlock()
	}
	k.n++
	if err := k.write(s.wbuf); err != nil {
		if !r.cfg.NoReply {
			k.mu.Lock()
			delete(k.pending, id)
			k.mu.Unlock()
		}
		return err
	}
	if !warm {
		r.sent.Add(1)
	}
	if r.cfg.NoReply && r.limit > 0 && k.n >= r.limit {
		k.close()
		s.cur = nil
	}
	return nil
}

// close retires the slot's socket and lets it send no more.
func (s *slot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cur != nil {
		s.cur.retire()
		s.cur = nil
	}
}

// pend is a request in flight: when it was due, and whether it belongs to
// the warm-up (Config.Warmup), which is not measured.
type pend struct {
	at   time.Duration
	warm bool
}

// beginMeasuring ends a closed loop's warm-up: the measured run starts now
// and lasts Duration.
func (r *run) beginMeasuring() {
	now := r.now()
	if !r.measured.CompareAndSwap(0, int64(max(now, 1))) {
		return
	}
	if r.cfg.Duration > 0 {
		r.mu.Lock()
		r.stopTimer = time.AfterFunc(r.cfg.Duration, r.halt)
		r.mu.Unlock()
	}
}

// sock is one connected socket (or WebSocket connection) and the
// requests in flight on it. Its reader goroutine matches replies, sweeps
// requests past the timeout (a WebSocket's beside it, since a read
// deadline would close the connection) and closes the socket once it is
// retired and has nothing in flight.
type sock struct {
	r    *run
	slot *slot
	conn *net.UDPConn   // nil for ws
	ws   *client.WSConn // ws only
	n    int            // requests sent; guarded by the slot's mu
	base uint16         // the first CoAP message id, random

	mu      sync.Mutex // guards pending and retired
	pending map[uint64]pend
	retired bool

	closeOnce sync.Once
	closed    atomic.Bool // by close, or the connection failed: the slot replaces it (ws)
}

// write sends one request.
func (k *sock) write(b []byte) error {
	if k.ws != nil {
		return k.ws.Send(context.Background(), b)
	}
	_, err := k.conn.Write(b)
	return err
}

// retire marks k as sending no more; it closes once it has nothing in
// flight.
func (k *sock) retire() {
	if k.r.cfg.NoReply {
		k.close()
		return
	}
	k.mu.Lock()
	k.retired = true
	empty := len(k.pending) == 0
	k.mu.Unlock()
	if empty {
		k.close()
	}
}

func (k *sock) close() {
	k.closeOnce.Do(func() {
		if k.ws != nil {
			// Closing waits for the listener's close frame (a second
			// at most): not in the caller's goroutine, which may be the
			// reader that is to read it, or Run closing every slot.
			k.closed.Store(true)
			k.r.closers.Go(func() { k.ws.Close() })
			return
		}
		k.conn.Close()
	})
}

var bufPool = sync.Pool{New: func() any { return new([65536]byte) }}
var histPool = sync.Pool{New: func() any { return new(Histogram) }}

func (k *sock) read() {
	r := k.r
	defer r.readers.Done()
	buf := bufPool.Get().(*[65536]byte)
	defer bufPool.Put(buf)
	h := histPool.Get().(*Histogram)
	defer func() {
		r.mu.Lock()
		r.hist.Merge(h)
		delete(r.live, k)
		r.mu.Unlock()
		*h = Histogram{}
		histPool.Put(h)
	}()
	var ack []byte
	nextSweep := r.now() + r.sweepEvery
	k.conn.SetReadDeadline(r.start.Add(nextSweep))
	for {
		n, err := k.conn.Read(buf[:])
		now := r.now()
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, net.ErrClosed):
				k.sweep(now, true)
				return
			case errors.As(err, &ne) && ne.Timeout():
			default:
				r.noteErr(err) // an ICMP error, most likely port unreachable
			}
		} else if id, ok, failed, out := r.t.codec.reply(buf[:n], ack); ok || out != nil {
			if out != nil {
				ack = out
				k.conn.Write(out)
			}
			if ok && k.complete(id, now, failed, h) {
				return
			}
		}
		if now >= nextSweep {
			if k.sweep(now, false) {
				return
			}
			nextSweep = now + r.sweepEvery
			k.conn.SetReadDeadline(r.start.Add(nextSweep))
		}
	}
}

// readWS is read for a WebSocket connection: it matches the replies in
// the messages as they come, while a goroutine beside it sweeps every
// sweepEvery, until the connection closes (or fails: then the error is
// counted, what was in flight is lost, and the slot opens a new one).
func (k *sock) readWS() {
	r := k.r
	defer r.readers.Done()
	h := histPool.Get().(*Histogram)
	defer func() {
		r.mu.Lock()
		r.hist.Merge(h)
		delete(r.live, k)
		r.mu.Unlock()
		*h = Histogram{}
		histPool.Put(h)
	}()
	stop := make(chan struct{})
	var sweeper sync.WaitGroup
	sweeper.Go(func() {
		t := time.NewTicker(r.sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if k.sweep(r.now(), false) {
					return
				}
			}
		}
	})
	var buf []byte
	for {
		b, err := k.ws.Receive(context.Background(), buf)
		now := r.now()
		if err != nil {
			if !k.closed.Load() {
				r.noteErr(err)
				k.close()
			}
			break
		}
		buf = b
		if id, ok, failed, _ := r.t.codec.reply(b, nil); ok && k.complete(id, now, failed, h) {
			break
		}
	}
	close(stop)
	sweeper.Wait()
	k.sweep(r.now(), true)
}

// complete records the reply to request id, if it is in flight on k (or
// answers k's only request, for raw targets), and sends a closed loop's
// next request. It reports whether k is done and closed.
func (k *sock) complete(id uint64, now time.Duration, failed bool, h *Histogram) bool {
	r := k.r
	k.mu.Lock()
	p, found := k.pending[id]
	if !found && r.fallback && len(k.pending) == 1 {
		for pid, pp := range k.pending {
			id, p, found = pid, pp, true
		}
	}
	if found {
		delete(k.pending, id)
	}
	done := k.retired && len(k.pending) == 0
	k.mu.Unlock()
	if found {
		switch {
		case p.warm:
		case failed:
			r.failed.Add(1)
			r.errs.Add(1)
		default:
			r.answered.Add(1)
			h.Record(now - p.at)
			for last := r.last.Load(); int64(now) > last && !r.last.CompareAndSwap(last, int64(now)); last = r.last.Load() {
			}
		}
		if r.cfg.Rate <= 0 {
			r.next(k.slot)
		}
	}
	if done {
		k.close()
	}
	return done
}

// sweep counts the requests past the timeout as lost (all of them if the
// socket is closed), sending a closed loop's next requests, and reports
// whether k is done and closed.
func (k *sock) sweep(now time.Duration, all bool) bool {
	r := k.r
	var expired, lost int
	k.mu.Lock()
	for id, p := range k.pending {
		if all || now-p.at >= r.cfg.Timeout {
			delete(k.pending, id)
			expired++
			if !p.warm {
				lost++
			}
		}
	}
	done := k.retired && len(k.pending) == 0
	k.mu.Unlock()
	r.lost.Add(int64(lost))
	if r.cfg.Rate <= 0 {
		for range expired {
			r.next(k.slot)
		}
	}
	if done {
		k.close()
	}
	return done
}
