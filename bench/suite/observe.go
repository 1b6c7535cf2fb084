package suite

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/schemas"
)

// The load of gateway-observe: observeCount observers, each a client
// socket of its own registered to GET /observed (observeRegistering
// registrations in flight), and a notifier that keeps observeInFlight
// notifications in flight.
const (
	observeCount       = 1000
	observeRegistering = 64
	observeInFlight    = 4
	observeShards      = 16 // latency histograms, each shared by some observers
	observeResource    = "observed"
)

// observeRegistered is the body of the answer to a registration (and to
// a deregistration); a notification's body is its publish time, 8 bytes.
var observeRegistered = []byte("registered")

// observeHist is one shard of the latencies of notifications.
type observeHist struct {
	mu sync.Mutex // guards h
	h  bench.Histogram
}

// observer is one client socket of gateway-observe, holding one
// registration whose token is its number.
type observer struct {
	c     *net.UDPConn
	token [4]byte
	out   []byte // datagrams written, reused
}

func (o *observer) write(m message.Message) error {
	n, err := coder.DefaultCoder.Encode(m, o.out)
	if err != nil {
		return err
	}
	_, err = o.c.Write(o.out[:n])
	return err
}

// decode returns the message in b, acknowledging it if it is a CON.
func (o *observer) decode(b []byte, m *message.Message) error {
	m.Options = m.Options[:0]
	if _, err := coder.DefaultCoder.Decode(b, m); err != nil {
		return err
	}
	if m.Type == message.Confirmable {
		return o.write(message.Message{Type: message.Acknowledgement, MessageID: m.MessageID})
	}
	return nil
}

// ask sends GET /observed with Observe v (0 registers, 1 deregisters) as
// a CON and waits for its answer: piggybacked, or separate after an empty
// ACK. It asks again after a second without one, five times at most, and
// returns whether the answer accepted a registration (it has the Observe
// option). Each time has a random message id: the socket's port may be
// one an earlier repetition's socket had, whose message ids the gateway
// still holds for EXCHANGE_LIFETIME.
func (o *observer) ask(ctx context.Context, v uint32) (bool, error) {
	req := message.Message{
		Type: message.Confirmable, Code: codes.GET, Token: o.token[:],
		Options: message.Options{{ID: message.Observe, Value: encodeObserve(v)}, {ID: message.URIPath, Value: []byte(observeResource)}},
	}
	buf := make([]byte, 1500)
	m := message.Message{Options: make(message.Options, 0, 8)}
	for range 5 {
		mid := int32(rand.N(1 << 16))
		req.MessageID = mid
		if err := o.write(req); err != nil {
			return false, err
		}
		for wait := time.Now().Add(time.Second); ; {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			o.c.SetReadDeadline(wait)
			n, err := o.c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return false, err
			}
			if err := o.decode(buf[:n], &m); err != nil {
				return false, err
			}
			switch {
			case m.Type == message.Acknowledgement && m.MessageID == mid && m.Code == codes.Empty:
				wait = time.Now().Add(10 * time.Second) // a separate response follows
			case m.Type == message.Acknowledgement && m.MessageID == mid,
				m.Type != message.Acknowledgement && string(m.Token) == string(o.token[:]) && string(m.Payload) == string(observeRegistered):
				_, _, err := m.Options.Find(message.Observe)
				return err == nil, nil
			}
			// Anything else (a notification still on its way) is not
			// the answer.
		}
	}
	return false, fmt.Errorf("%s: GET /%s with Observe %d: no answer", o.c.LocalAddr(), observeResource, v)
}

func encodeObserve(v uint32) []byte {
	if v == 0 {
		return nil
	}
	return []byte{byte(v)}
}

// receive reads notifications until stop is set and a read deadline
// passes, counting those that carry a publish time into delivered, and
// their latency into h, and keeping the time of the latest in last (unix
// nanoseconds).
func (o *observer) receive(stop *atomic.Bool, delivered, last *atomic.Int64, h *observeHist) error {
	buf := make([]byte, 1500)
	m := message.Message{Options: make(message.Options, 0, 8)}
	for {
		n, err := o.c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if stop.Load() {
				return nil
			}
			continue
		}
		if err != nil {
			return err
		}
		now := time.Now()
		if err := o.decode(buf[:n], &m); err != nil {
			return err
		}
		if string(m.Token) != string(o.token[:]) || len(m.Payload) != 8 || m.Code != codes.Content {
			continue
		}
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))
		h.mu.Lock()
		h.h.Record(now.Sub(sent))
		h.mu.Unlock()
		delivered.Add(1)
		for at := now.UnixNano(); ; {
			l := last.Load()
			if at <= l || last.CompareAndSwap(l, at) {
				break
			}
		}
	}
}

// forEach runs f for each observer, n at a time, and returns the first
// error.
func forEach(obs []*observer, n int, f func(o *observer) error) error {
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first error
		mu    sync.Mutex // guards first
	)
	for range min(n, len(obs)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(obs)); i = next.Add(1) - 1 {
				if err := f(obs[i]); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// gatewayObserve measures CoAP Observe notifications delivered to
// observers, per second: observeCount observers, each a client socket of
// its own, registered to GET /observed on a coap listener of their own,
// through a worker on a NATS connection of its own that accepts every
// registration; then a notifier, on that connection, publishes
// notifications for the case's duration, observeInFlight in flight (a
// NATS request that the gateway answers once it has sent the
// notification to every observer). Each notification carries its publish
// time: the latencies are from the publish to an observer's socket. Sent
// is the notifications the gateway sent, lost those that no observer
// received within a second of the last. The observers deregister
// afterwards.
func (s *suite) gatewayObserve(ctx context.Context) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	nc, err := nats.Connect(e.NATS.ClientURL(), nats.Name("udpgate bench suite gateway-observe"))
	if err != nil {
		return bench.Sample{}, err
	}
	defer nc.Close()
	prefix := cmp.Or(s.cfg.Prefix, schemas.DefaultPrefix)
	port := e.observe.Port()
	sub, err := nc.QueueSubscribe(schemas.CoAPSubject(prefix, port, "GET", []string{observeResource}), "observed", func(m *nats.Msg) {
		r := nats.NewMsg("")
		r.Header.Set(schemas.HeaderCoAPContentFormat, "0")
		if m.Header.Get(schemas.HeaderCoAPObserve) == schemas.CoAPObserveRegister {
			r.Header.Set(schemas.HeaderCoAPObserve, "1")
		}
		r.Data = observeRegistered
		m.RespondMsg(r)
	})
	if err != nil {
		return bench.Sample{}, err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return bench.Sample{}, err
	}

	obs, err := openObservers(e.observe, observeCount)
	defer func() {
		for _, o := range obs {
			o.c.Close()
		}
	}()
	if err != nil {
		return bench.Sample{}, err
	}
	var refused atomic.Int64
	if err := forEach(obs, observeRegistering, func(o *observer) error {
		ok, err := o.ask(ctx, 0)
		if err == nil && !ok {
			refused.Add(1)
		}
		return err
	}); err != nil {
		return bench.Sample{}, err
	}
	if n := refused.Load(); n > 0 {
		return bench.Sample{}, fmt.Errorf("%d of %d registrations refused", n, len(obs))
	}

	// The observers read until stop is set.
	var (
		stop            atomic.Bool
		delivered, last atomic.Int64
		hists           [observeShards]observeHist
		readers         sync.WaitGroup
		readErr         = make(chan error, len(obs))
	)
	for i, o := range obs {
		o.c.SetReadDeadline(time.Time{})
		readers.Go(func() { readErr <- o.receive(&stop, &delivered, &last, &hists[i%observeShards]) })
	}
	// The notifier: observeInFlight requests in flight for the duration.
	subject := schemas.NotifySubject(prefix, port, []string{observeResource})
	var (
		published, sent, failed atomic.Int64
		notifiers               sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(s.duration)
	for range observeInFlight {
		notifiers.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				m := nats.NewMsg(subject)
				m.Data = binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
				r, err := nc.RequestMsg(m, s.timeout)
				published.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				n, err := strconv.Atoi(r.Header.Get(schemas.HeaderCoAPObservers))
				if err != nil {
					failed.Add(1)
					continue
				}
				sent.Add(int64(n))
			}
		})
	}
	notifiers.Wait()
	// Wait for the notifications sent to arrive: until all did, or a
	// second passes without one.
	for seen, quiet := delivered.Load(), time.Now(); delivered.Load() < sent.Load() && time.Since(quiet) < time.Second; {
		if err := bench.Pause(ctx, 5*time.Millisecond); err != nil {
			break
		}
		if d := delivered.Load(); d != seen {
			seen, quiet = d, time.Now()
		}
	}
	stop.Store(true)
	for _, o := range obs {
		o.c.SetReadDeadline(time.Now()) // ends the read under way
	}
	readers.Wait()
	close(readErr)
	for err := range readErr {
		if err != nil {
			return bench.Sample{}, err
		}
	}

	// Deregister, so that the next repetition's observers are the only
	// ones.
	if err := forEach(obs, observeRegistering, func(o *observer) error {
		_, err := o.ask(ctx, 1)
		return err
	}); err != nil {
		return bench.Sample{}, err
	}

	var h bench.Histogram
	for i := range hists {
		h.Merge(&hists[i].h)
	}
	d := delivered.Load()
	elapsed := max(time.Unix(0, last.Load()).Sub(start), s.duration)
	notifications := published.Load() - failed.Load()
	s.noteOf["gateway-observe"] = fmt.Sprintf("notifications delivered per second to %d observers (a socket each), %d notifications of 8 bytes in flight; notifications_per_s: published; latency from publish to the observer's socket",
		len(obs), observeInFlight)
	l := h.Latency()
	return bench.Sample{
		Rate: float64(d) / elapsed.Seconds(), P50: l.P50, P99: l.P99,
		Sent: sent.Load(), Lost: max(sent.Load()-d, 0), Errors: failed.Load(),
		Extra: map[string]float64{"observers": float64(len(obs)), "notifications_per_s": float64(notifications) / elapsed.Seconds()},
	}, nil
}

// openObservers opens n client sockets on loopback to the coap listener
// at addr, each an observer whose token is its number.
func openObservers(addr netip.AddrPort, n int) ([]*observer, error) {
	obs := make([]*observer, 0, n)
	ua := net.UDPAddrFromAddrPort(addr)
	for i := range n {
		c, err := net.DialUDP("udp4", nil, ua)
		if err != nil {
			return obs, err
		}
		o := &observer{c: c, out: make([]byte, 256)}
		binary.BigEndian.PutUint32(o.token[:], uint32(i))
		obs = append(obs, o)
	}
	return obs, nil
}
