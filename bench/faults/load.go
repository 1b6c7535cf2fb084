package faults

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpgate/udpgate/bench"
)

// faultPayload is the size of a request: an 8-byte id, then padding.
const faultPayload = 32

// faultGrace is how long the client goes on reading after the last
// request's timeout, to tell late replies from lost ones.
const faultGrace = time.Second

// faultLoad is an open loop of numbered requests from one UDP socket: the
// i-th leaves at i/rate, whatever comes back, until count are sent or the
// duration has passed; the replies are matched by number.
type faultLoad struct {
	conn    *net.UDPConn
	rate    float64
	timeout time.Duration
	start   time.Time
	sentAt  []atomic.Int64 // ns since start, by id; set before the send
	sent    atomic.Int64
	done    chan struct{} // closed when the sender has stopped
	wg      sync.WaitGroup
	// Written by the reader only; read after wg.Wait.
	first   []time.Duration // first reply, ns since start; 0 none
	replies []int32
}

// startLoad starts an open loop at rate against target for d.
func startLoad(ctx context.Context, target netip.AddrPort, rate float64, d, timeout time.Duration) (*faultLoad, error) {
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(4 << 20)
	n := int(rate*d.Seconds()) + 1
	l := &faultLoad{
		conn: c, rate: rate, timeout: timeout, start: time.Now(), sentAt: make([]atomic.Int64, n),
		done: make(chan struct{}), first: make([]time.Duration, n), replies: make([]int32, n),
	}
	l.wg.Go(func() { l.send(ctx, n, d) })
	l.wg.Go(func() { l.read(ctx) })
	return l, nil
}

func (l *faultLoad) send(ctx context.Context, n int, d time.Duration) {
	defer close(l.done)
	buf := make([]byte, faultPayload)
	for i := range buf[8:] {
		buf[8+i] = 'x'
	}
	i := 0
	for i < n && ctx.Err() == nil {
		elapsed := time.Since(l.start)
		if elapsed >= d {
			break
		}
		due := min(n, int(elapsed.Seconds()*l.rate)+1)
		for ; i < due; i++ {
			binary.BigEndian.PutUint64(buf, uint64(i))
			l.sentAt[i].Store(int64(time.Since(l.start)))
			l.sent.Store(int64(i + 1))
			l.conn.Write(buf)
		}
		time.Sleep(time.Millisecond)
	}
}

// read matches replies until the last request's timeout and a grace have
// passed, every request is answered, or ctx ends.
func (l *faultLoad) read(ctx context.Context) {
	defer l.conn.Close()
	buf := make([]byte, 1500)
	var (
		answered int64 // ids with a reply
		stop     readEnd
	)
	for {
		if stop.due(ctx, l.done, l.timeout, answered == l.sent.Load()) {
			return
		}
		l.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		k, err := l.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP port unreachable while the gateway is gone
		}
		at := time.Since(l.start)
		if k < 8 {
			continue
		}
		id := binary.BigEndian.Uint64(buf)
		if id >= uint64(len(l.replies)) || int64(id) >= l.sent.Load() {
			continue
		}
		if l.replies[id] == 0 {
			l.first[id] = at
			answered++
		}
		l.replies[id]++
	}
}

// wait waits for the load to end (the last request's timeout and a
// grace, or every request answered).
func (l *faultLoad) wait() { l.wg.Wait() }

// count sums the requests for which pick(id, sent since start) holds.
func (l *faultLoad) count(name string, pick func(id int, at time.Duration) bool) faultRow {
	r := faultRow{Name: name, Rate: l.rate}
	var (
		h         bench.Histogram
		slowestAt time.Duration // when the slowest answered request was sent
		slowest   time.Duration
	)
	for id := range int(l.sent.Load()) {
		at := time.Duration(l.sentAt[id].Load())
		if !pick(id, at) {
			continue
		}
		r.Sent++
		switch {
		case l.replies[id] == 0:
			r.Lost++
		case l.first[id]-at > l.timeout:
			r.Late++
		default:
			r.Answered++
			h.Record(l.first[id] - at)
			if d := l.first[id] - at; d > slowest {
				slowest, slowestAt = d, at
			}
		}
		if l.replies[id] > 1 {
			r.Duplicate++
		}
	}
	lat := h.Latency()
	r.P50us, r.P99us, r.MaxUs = float64(lat.P50.Microseconds()), float64(lat.P99.Microseconds()), float64(lat.Max.Microseconds())
	r.Extra = map[string]float64{"max_sent_at_ms": float64(slowestAt.Milliseconds())}
	return r
}

func allRequests(int, time.Duration) bool { return true }

// The scenarios' parts.

// readEnd decides when a load's reader stops: once the sender is done,
// after the last request's timeout and a grace, or 200 ms after every
// request is answered (time for duplicates to show), or when ctx ends.
type readEnd struct {
	end      time.Time // zero until the sender is done
	settling bool      // every request answered: waiting for duplicates
}

// due reports whether the reader stops now; allAnswered says whether
// every request sent so far has its answer.
func (r *readEnd) due(ctx context.Context, senderDone <-chan struct{}, timeout time.Duration, allAnswered bool) bool {
	select {
	case <-senderDone:
		if r.end.IsZero() {
			r.end = time.Now().Add(timeout + faultGrace)
		}
	default:
	}
	if r.end.IsZero() {
		return false
	}
	if time.Now().After(r.end) || ctx.Err() != nil {
		return true
	}
	if !r.settling && allAnswered {
		r.end, r.settling = time.Now().Add(200*time.Millisecond), true
	}
	return false
}
