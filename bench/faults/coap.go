package faults

import (
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/bench"
)

// RFC 7252 §4.8's transmission parameters, as the fault suite's CoAP
// client uses them (§4.2).
const (
	coapACKTimeout      = 2 * time.Second
	coapACKRandomFactor = 1.5
	coapMaxRetransmit   = 4
)

// coapIDs is how many requests one socket of a faultCoAPLoad sends: a message
// id is never reused, as §4.4 asks within EXCHANGE_LIFETIME (247 s).
const coapIDs = 1 << 16

// faultCoAPLoad is an open loop of CoAP confirmable requests, POST /echo, each
// with its number as its 8-byte token and the start of its payload, the
// i-th leaving at i/rate until count are sent or the duration has passed.
// A request is retransmitted as RFC 7252 §4.2 says (after a random 2 to 3
// s, then twice as long each time, at most 4 times) until an ACK, a
// response or a reset comes, or the client's timeout has passed since it
// was first sent (the exchange's lifetime here). Responses are matched by
// message id and token: a piggybacked response is the ACK of the
// request's message id with its token; a separate one carries its token
// (and is acknowledged if confirmable).
type faultCoAPLoad struct {
	conns      []*net.UDPConn // socket k sends requests k*coapIDs to (k+1)*coapIDs-1
	rate       float64
	timeout    time.Duration
	ackTimeout time.Duration // RFC 7252's ACK_TIMEOUT
	start      time.Time
	sentAt     []atomic.Int64 // ns since start of the first transmission, by id; set before it
	sent       atomic.Int64
	settled    []atomic.Bool // acknowledged or answered: no more retransmissions
	final      atomic.Int64  // requests with a response or a reset
	done       chan struct{} // closed when the last request has left the first time
	wg         sync.WaitGroup
	// Written by the sender only; read after wg.Wait.
	retransmits []int8
	// Written by socket k's reader for its ids only; read after wg.Wait.
	first     []time.Duration // first response, since start
	code      []codes.Code    // of the first response; codes.Empty for a reset
	from      []uint32        // which message the first response was: see response
	responses []int32         // distinct responses
	acked     []bool          // an empty ACK came first: a separate response follows
	repeated  atomic.Int64    // copies of a response already counted (a retransmission's)
	stray     atomic.Int64    // datagrams that match no request
}

// startFaultCoAPLoad starts a CoAP load at rate against target for d.
func startFaultCoAPLoad(ctx context.Context, target netip.AddrPort, rate float64, d, timeout time.Duration) (*faultCoAPLoad, error) {
	return startCoAPLoadEvery(ctx, target, rate, d, timeout, coapACKTimeout)
}

// startCoAPLoadEvery is startFaultCoAPLoad with another ACK_TIMEOUT.
func startCoAPLoadEvery(ctx context.Context, target netip.AddrPort, rate float64, d, timeout, ackTimeout time.Duration) (*faultCoAPLoad, error) {
	n := int(rate*d.Seconds()) + 1
	l := &faultCoAPLoad{
		rate: rate, timeout: timeout, ackTimeout: ackTimeout, sentAt: make([]atomic.Int64, n), settled: make([]atomic.Bool, n),
		done: make(chan struct{}), retransmits: make([]int8, n), first: make([]time.Duration, n),
		code: make([]codes.Code, n), from: make([]uint32, n), responses: make([]int32, n), acked: make([]bool, n),
	}
	for range (n + coapIDs - 1) / coapIDs {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
		if err != nil {
			for _, c := range l.conns {
				c.Close()
			}
			return nil, err
		}
		c.SetReadBuffer(4 << 20)
		l.conns = append(l.conns, c)
	}
	l.start = time.Now()
	l.wg.Go(func() { l.send(ctx, n, d) })
	for k := range l.conns {
		l.wg.Go(func() { l.read(ctx, k) })
	}
	return l, nil
}

// faultRetransmit is a request's next retransmission, in the sender's queue.
type faultRetransmit struct {
	at   time.Duration // since start
	id   int
	wait time.Duration // the timeout that ends at at
}

// faultRetransmits is a min-heap by at.
type faultRetransmits []faultRetransmit

func (q faultRetransmits) Len() int           { return len(q) }
func (q faultRetransmits) Less(i, j int) bool { return q[i].at < q[j].at }
func (q faultRetransmits) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *faultRetransmits) Push(x any)        { *q = append(*q, x.(faultRetransmit)) }
func (q *faultRetransmits) Pop() any {
	old := *q
	r := old[len(old)-1]
	*q = old[:len(old)-1]
	return r
}

// send sends the requests, each at its time, and retransmits those
// neither acknowledged nor answered, until every one is settled or its
// lifetime is over.
func (l *faultCoAPLoad) send(ctx context.Context, n int, d time.Duration) {
	buf, payload := make([]byte, 64), make([]byte, faultPayload)
	for i := range payload[8:] {
		payload[8+i] = 'x'
	}
	var q faultRetransmits
	i, all := 0, false
	for ctx.Err() == nil {
		now := time.Since(l.start)
		if !all && (i >= n || now >= d) {
			all = true
			close(l.done)
		}
		if !all {
			for due := min(n, int(now.Seconds()*l.rate)+1); i < due; i++ {
				l.sentAt[i].Store(int64(time.Since(l.start)))
				l.sent.Store(int64(i + 1))
				l.write(i, buf, payload)
				wait := l.ackTimeout + rand.N(time.Duration(float64(l.ackTimeout)*(coapACKRandomFactor-1)))
				heap.Push(&q, faultRetransmit{at: now + wait, id: i, wait: wait})
			}
		}
		for len(q) > 0 && q[0].at <= now {
			r := heap.Pop(&q).(faultRetransmit)
			if l.settled[r.id].Load() || l.retransmits[r.id] >= coapMaxRetransmit || now-time.Duration(l.sentAt[r.id].Load()) >= l.timeout {
				continue
			}
			l.write(r.id, buf, payload)
			l.retransmits[r.id]++
			r.wait *= 2
			r.at = now + r.wait
			heap.Push(&q, r)
		}
		if all && (len(q) == 0 || l.final.Load() == l.sent.Load()) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	if !all {
		close(l.done)
	}
}

// coapEcho is the path of the load's requests.
var coapEcho = message.Options{{ID: message.URIPath, Value: []byte("echo")}}

// write sends request id, the same bytes each time, encoded in buf;
// payload's first 8 bytes are overwritten with its number.
func (l *faultCoAPLoad) write(id int, buf, payload []byte) {
	var token [8]byte
	binary.BigEndian.PutUint64(token[:], uint64(id))
	copy(payload, token[:])
	k, err := coder.DefaultCoder.Encode(message.Message{
		Token: token[:], Code: codes.POST, MessageID: int32(id % coapIDs), Type: message.Confirmable,
		Options: coapEcho, Payload: payload,
	}, buf)
	if err != nil {
		panic(fmt.Sprintf("bench faults: encode a CoAP request: %v", err)) // fixed sizes: cannot fail
	}
	l.conns[id/coapIDs].Write(buf[:k])
}

// read reads socket k's responses until the client's timeout and a grace
// have passed since the last request left, every request has its
// response, or ctx ends.
func (l *faultCoAPLoad) read(ctx context.Context, k int) {
	conn := l.conns[k]
	buf := make([]byte, 1500)
	ack := make([]byte, 4)
	var (
		m    = message.Message{Options: make(message.Options, 0, 16)} // Decode fills the capacity it finds
		stop readEnd
	)
	for {
		if stop.due(ctx, l.done, l.timeout, l.final.Load() == l.sent.Load()) {
			return
		}
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP port unreachable
		}
		at := time.Since(l.start)
		if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err != nil {
			l.stray.Add(1)
			continue
		}
		sent := int(l.sent.Load())
		switch m.Type {
		case message.Acknowledgement, message.Reset:
			id := k*coapIDs + int(m.MessageID)
			if id >= sent {
				l.stray.Add(1)
				continue
			}
			switch {
			case m.Type == message.Reset:
				l.response(id, at, codes.Empty, 1)
			case m.Code == codes.Empty:
				if l.responses[id] == 0 {
					l.acked[id] = true
				}
				l.settled[id].Store(true)
			case coapTokenID(m.Token) != id:
				l.stray.Add(1)
			default:
				l.response(id, at, m.Code, 1)
			}
		case message.Confirmable, message.NonConfirmable:
			if m.Type == message.Confirmable {
				ack[0] = 1<<6 | byte(message.Acknowledgement)<<4
				binary.BigEndian.PutUint16(ack[2:], uint16(m.MessageID))
				conn.Write(ack)
			}
			id := coapTokenID(m.Token)
			if id < k*coapIDs || id >= min(sent, (k+1)*coapIDs) {
				l.stray.Add(1)
				continue
			}
			l.response(id, at, m.Code, 1<<16|uint32(m.MessageID))
		}
	}
}

// coapTokenID returns the request number a token carries, or -1.
func coapTokenID(token []byte) int {
	if len(token) != 8 {
		return -1
	}
	v := binary.BigEndian.Uint64(token)
	if v > 1<<40 {
		return -1
	}
	return int(v)
}

// response records a response to id: from says which message it is (1
// the ACK of the request's message id, else 1<<16 | the server's message
// id of a separate response), so that a copy of the same message, sent
// again for a faultRetransmit, is not taken for a second response.
func (l *faultCoAPLoad) response(id int, at time.Duration, code codes.Code, from uint32) {
	switch {
	case l.responses[id] == 0:
		l.first[id], l.code[id], l.from[id], l.responses[id] = at, code, from, 1
		l.settled[id].Store(true)
		l.final.Add(1)
	case l.from[id] == from:
		l.repeated.Add(1)
	default:
		l.responses[id]++
	}
}

// wait waits for the load to end and closes its sockets.
func (l *faultCoAPLoad) wait() {
	l.wg.Wait()
	for _, c := range l.conns {
		c.Close()
	}
}

// count sums the load's requests: answered (a 2.xx within the timeout),
// failed (an error response or a reset within it), late (the first
// response after it), lost (nothing but, perhaps, an empty ACK).
func (l *faultCoAPLoad) count(name string) faultRow {
	r := faultRow{Name: name, Rate: l.rate, Extra: map[string]float64{}}
	var (
		h                              bench.Histogram
		retransmitted, afterRetransmit int
		acked, ackedLost               int
	)
	for id := range int(l.sent.Load()) {
		at := time.Duration(l.sentAt[id].Load())
		r.Sent++
		if l.retransmits[id] > 0 {
			retransmitted++
		}
		if l.acked[id] {
			acked++
		}
		switch {
		case l.responses[id] == 0:
			r.Lost++
			if l.acked[id] {
				ackedLost++
			}
		case l.first[id]-at > l.timeout:
			r.Late++
		case l.code[id] == codes.Empty:
			r.Failed++
			r.Extra["reset"]++
		case l.code[id] >= codes.BadRequest:
			r.Failed++
			r.Extra["failed_"+coapCode(l.code[id])]++
		default:
			r.Answered++
			h.Record(l.first[id] - at)
			if l.retransmits[id] > 0 {
				afterRetransmit++
			}
		}
		if l.responses[id] > 1 {
			r.Duplicate++
		}
	}
	lat := h.Latency()
	r.P50us, r.P99us, r.MaxUs = float64(lat.P50.Microseconds()), float64(lat.P99.Microseconds()), float64(lat.Max.Microseconds())
	r.Extra["retransmitted"] = float64(retransmitted)
	r.Extra["answered_after_retransmission"] = float64(afterRetransmit)
	r.Extra["acked_then_answered_separately"] = float64(acked - ackedLost)
	r.Extra["acked_never_answered"] = float64(ackedLost)
	r.Extra["repeated_responses"] = float64(l.repeated.Load())
	r.Extra["stray"] = float64(l.stray.Load())
	return r
}

// coapCode formats a response code as c.dd.
func coapCode(c codes.Code) string {
	return fmt.Sprintf("%d.%02d", c>>5, c&0x1f)
}
