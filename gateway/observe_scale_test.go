package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/workers"
)

// The load of TestObserveTenThousand: scaleSockets client sockets per
// node, each registering scaleTokens observers (within the default
// MaxObserversPerPeer), scaleWindow registrations in flight per socket.
const (
	scaleNodes   = 2
	scaleSockets = 100
	scaleTokens  = 50
	scaleWindow  = 4
)

// scaleObserver is one client socket holding scaleTokens registrations of
// /sensors/1, tokens 4 bytes: the socket's number, then the token's.
type scaleObserver struct {
	c   *net.UDPConn
	id  uint16
	buf []byte // datagrams read, reused
	out []byte // datagrams written, reused
	got [scaleTokens]int
}

func (o *scaleObserver) token(i int) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, o.id), uint16(i))
}

// tokenOf returns the index of one of o's tokens, or -1.
func (o *scaleObserver) tokenOf(tok []byte) int {
	if len(tok) != 4 || binary.BigEndian.Uint16(tok) != o.id {
		return -1
	}
	if i := int(binary.BigEndian.Uint16(tok[2:])); i < scaleTokens {
		return i
	}
	return -1
}

func (o *scaleObserver) write(m message.Message) error {
	n, err := coder.DefaultCoder.Encode(m, o.out)
	if err != nil {
		return err
	}
	_, err = o.c.Write(o.out[:n])
	return err
}

// read returns the next message, acknowledging it if it is a CON. It
// returns a timeout error after wait.
func (o *scaleObserver) read(wait time.Duration) (message.Message, error) {
	o.c.SetReadDeadline(time.Now().Add(wait))
	n, err := o.c.Read(o.buf)
	if err != nil {
		return message.Message{}, err
	}
	m := message.Message{Options: make(message.Options, 0, 8)}
	if _, err := coder.DefaultCoder.Decode(o.buf[:n], &m); err != nil {
		return m, fmt.Errorf("% x: %w", o.buf[:n], err)
	}
	if m.Type == message.Confirmable {
		err = o.write(message.Message{Type: message.Acknowledgement, MessageID: m.MessageID})
	}
	return m, err
}

// register registers each of o's tokens as an observer, scaleWindow in
// flight, sending a registration again after a second without its
// response (same message id, as a CoAP client retransmits). A response
// may come piggybacked or, after an empty ACK, as a separate CON.
func (o *scaleObserver) register(deadline time.Time) error {
	var (
		mids    [scaleTokens]int32
		sentAt  [scaleTokens]time.Time
		done    [scaleTokens]bool
		next    int // the next token to send
		pending = map[int32]int{}
		left    = scaleTokens
	)
	send := func(i int) error {
		sentAt[i] = time.Now()
		return o.write(message.Message{
			Type: message.Confirmable, Code: codes.GET, Token: o.token(i), MessageID: mids[i],
			Options: message.Options{{ID: message.Observe}, {ID: message.URIPath, Value: []byte("sensors")}, {ID: message.URIPath, Value: []byte("1")}},
		})
	}
	for left > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("socket %d: %d registrations unanswered", o.id, left)
		}
		for len(pending) < scaleWindow && next < scaleTokens {
			mids[next] = int32(next + 1)
			pending[mids[next]] = next
			if err := send(next); err != nil {
				return err
			}
			next++
		}
		for _, i := range pending {
			if time.Since(sentAt[i]) > time.Second {
				if err := send(i); err != nil {
					return err
				}
			}
		}
		m, err := o.read(200 * time.Millisecond)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return err
		}
		if m.Type == message.Acknowledgement && m.Code == codes.Empty {
			// A separate response follows: stop resending.
			if i, ok := pending[m.MessageID]; ok {
				sentAt[i] = deadline
			}
			continue
		}
		i := o.tokenOf(m.Token)
		if i < 0 || done[i] {
			continue
		}
		if m.Code != codes.Content || !hasObserve(m) {
			return fmt.Errorf("socket %d token %d: registration answered %v, Observe %v", o.id, i, m.Code, hasObserve(m))
		}
		done[i] = true
		delete(pending, mids[i])
		left--
	}
	return nil
}

// await reads notifications until each of o's tokens has one with body;
// any other notification (a duplicate, an older one) fails. It returns
// when the last arrived. Late answers to registrations are skipped.
func (o *scaleObserver) await(body string) (time.Time, error) {
	var last time.Time
	for left := scaleTokens; left > 0; {
		m, err := o.read(30 * time.Second)
		if err != nil {
			return last, fmt.Errorf("socket %d: %d notifications of %q missing: %w", o.id, left, body, err)
		}
		if m.Type == message.Acknowledgement || string(m.Payload) == "registered\n" {
			// A late answer to a registration sent again.
			continue
		}
		i := o.tokenOf(m.Token)
		if i < 0 || string(m.Payload) != body || !hasObserve(m) {
			return last, fmt.Errorf("socket %d: token % x %q, waiting for %q", o.id, m.Token, m.Payload, body)
		}
		if o.got[i]++; o.got[i] > 1 {
			return last, fmt.Errorf("socket %d token %d: %q twice", o.id, i, body)
		}
		last = time.Now()
		left--
	}
	o.got = [scaleTokens]int{}
	return last, nil
}

// each runs f for every observer, one goroutine each, and returns the
// first error.
func each(obs []*scaleObserver, f func(o *scaleObserver) error) error {
	errs := make(chan error, len(obs))
	var wg sync.WaitGroup
	for _, o := range obs {
		wg.Go(func() { errs <- f(o) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestObserveTenThousand: two gateway nodes on one NATS server, each with
// a coap listener on the same port (127.0.0.1 and 127.0.0.2), hold 5,000
// observers each of /sensors/1, registered from 200 real UDP sockets
// through a worker of the SDK that accepts them. One notification, a
// single NATS message, reaches every one of the 10,000 observers exactly
// once; the next one finds none that got the first twice. It logs the
// time from the publish until the last notification arrived and the Go
// heap each observer holds (docs/performance.md, "Observe").
func TestObserveTenThousand(t *testing.T) {
	s := natstest.RunServer(t)
	c1, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c1.LocalAddr().(*net.UDPAddr).Port
	c2, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port})
	if err != nil {
		c1.Close()
		if os.Getenv("CI") != "" {
			t.Fatalf("no second loopback address with port %d: %v", port, err)
		}
		t.Skipf("no second loopback address with port %d: %v", port, err)
	}
	nodes := []*Gateway{
		observeNode(t, s, c1, "scale-1", coap.Config{}),
		observeNode(t, s, c2, "scale-2", coap.Config{}),
	}
	inst := sensorInstances(t, s, uint16(port), 1)[0]

	var obs []*scaleObserver
	for n, c := range []*net.UDPConn{c1, c2} {
		for i := range scaleSockets {
			cc, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			obs = append(obs, &scaleObserver{c: cc, id: uint16(n*scaleSockets + i), buf: make([]byte, 2048), out: make([]byte, 256)})
		}
	}
	before := heapAlloc()
	registering := time.Now()
	if err := each(obs, func(o *scaleObserver) error { return o.register(time.Now().Add(2 * time.Minute)) }); err != nil {
		t.Fatal(err)
	}
	registered := time.Since(registering)
	after := heapAlloc()
	total := 0
	for i, g := range nodes {
		st := observeStats(g)
		if st.Observers != scaleSockets*scaleTokens {
			t.Fatalf("node %d holds %d observers, want %d", i+1, st.Observers, scaleSockets*scaleTokens)
		}
		total += st.Observers
	}
	// A registration sent again while its worker had not answered is
	// handed to the worker again (coap.Edge's Retransmitted): it may
	// answer more than one per observer.
	if n := inst.answered.Load(); n < int64(total) {
		t.Fatalf("the worker answered %d registrations, want %d at least", n, total)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	notify := func(body string) time.Duration {
		t.Helper()
		var (
			mu   sync.Mutex // guards last
			last time.Time
		)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			done <- each(obs, func(o *scaleObserver) error {
				at, err := o.await(body)
				mu.Lock()
				if at.After(last) {
					last = at
				}
				mu.Unlock()
				return err
			})
		}()
		if err := inst.notifier.Notify(ctx, "/sensors/1", workers.Representation{ContentFormat: 0, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return last.Sub(start)
	}
	first := notify("v1")
	second := notify("v2") // also: nobody got v1 twice
	for i, g := range nodes {
		if st := observeStats(g); st.NON+st.CON != 2*scaleSockets*scaleTokens || st.Observers != scaleSockets*scaleTokens {
			t.Fatalf("node %d: stats %+v", i+1, st)
		}
	}
	t.Logf("%d observers on %d nodes (%d sockets x %d tokens each), registered in %s: the last notification arrived %s after the publish (the next one %s); Go heap %.0f bytes per observer (%.1f MiB in all)",
		total, scaleNodes, scaleSockets, scaleTokens, registered.Round(time.Millisecond), first.Round(time.Microsecond), second.Round(time.Microsecond),
		float64(after-before)/float64(total), float64(after-before)/(1<<20))
}

// heapAlloc returns the bytes of live heap objects after garbage
// collections.
func heapAlloc() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
