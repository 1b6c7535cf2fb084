package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// BenchmarkCoAP measures CoAP GET /time answered with a fixed 20-byte body,
// once by go-coap's own UDP server in this process ("direct") and once
// through the gateway ("gateway": coap edge, JetStream stream on file
// storage, a contract-level worker on a durable pull consumer, core NATS
// back, egress), under two loads, from go-coap's UDP client:
//
//   - long: 8 long-lived sockets with 8 requests in flight each (64
//     goroutines, NSTART 8 on each socket). go-coap's server keeps per peer
//     a cache of every response for EXCHANGE_LIFETIME (247 s) and scans it
//     on each datagram from that peer, so its cost per request grows with
//     the requests the peer sent before.
//   - short: 64 goroutines, each dialling a fresh socket, sending
//     coapShortBatch requests one after another on it and closing it; the
//     server sees a stream of new peers.
//
// Both servers are started afresh for every b.N round, so a round measures
// from empty caches for about -benchtime. The latency percentiles are per
// request, without the dial of a short-lived socket; requests per second
// count answered requests over the whole round, dials included. Allocations
// are those of the whole process per request (client, server and, for the
// gateway, NATS server and worker). A request that fails or is not answered
// within coapRequestTimeout counts as lost; a round fails only if most are.
//
// Compare the cases as ratios from one run (docs/performance.md):
//
//	go test -run '^$' -bench BenchmarkCoAP -benchtime 5s -count 3 ./gateway
//
// The go-coap client draws message IDs from a 16-bit counter per socket, so
// a long-lived socket reuses them after 65536 requests, sooner than RFC 7252
// allows at these rates; go-coap's server would then answer from its cache.
// Keep -benchtime so that a long-lived socket sends fewer (b.N/8).
func BenchmarkCoAP(b *testing.B) {
	servers := []struct {
		name  string
		start func(*testing.B) string
	}{
		{"direct", goCoAPServer},
		{"gateway", gatewayCoAPServer},
	}
	loads := []struct {
		name string
		run  func(*testing.B, string)
	}{
		{"long", coapLongLived},
		{"short", coapShortLived},
	}
	for _, load := range loads {
		for _, srv := range servers {
			b.Run(srv.name+"-"+load.name, func(b *testing.B) {
				load.run(b, srv.start(b))
			})
		}
	}
}

const (
	coapSockets        = 8 // long-lived sockets
	coapInFlight       = 8 // requests in flight per long-lived socket
	coapWorkers        = coapSockets * coapInFlight
	coapShortBatch     = 4 // requests per short-lived socket
	coapRequestTimeout = 5 * time.Second
	// coapRunLimit bounds one b.N round whatever -benchtime asks; a round
	// that does not finish within it fails.
	coapRunLimit = 5 * time.Minute
)

var coapTimeBody = []byte("2026-11-23T00:00:00Z")

// goCoAPServer runs go-coap's UDP server with default options on
// 127.0.0.1, answering GET /time, until the round ends.
func goCoAPServer(b *testing.B) string {
	b.Helper()
	l, err := coapnet.NewListenUDP("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := mux.NewRouter()
	r.HandleFunc("/time", func(w mux.ResponseWriter, _ *mux.Message) {
		if err := w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader(coapTimeBody)); err != nil {
			b.Errorf("go-coap server: %v", err)
		}
	})
	s := coapudp.NewServer(options.WithMux(r))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	b.Cleanup(func() {
		s.Stop()
		l.Close() // in case Serve had not yet taken it when Stop ran
		if err := <-done; err != nil {
			b.Errorf("go-coap server: %v", err)
		}
	})
	return l.LocalAddr().String()
}

// gatewayCoAPServer runs a gateway with one coap listener on 127.0.0.1 and
// the coapGateway worker's GET /time (content format 0, the same answer
// as goCoAPServer's), until the round ends.
func gatewayCoAPServer(b *testing.B) string {
	b.Helper()
	s := natstest.RunServer(b)
	c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		b.Fatal(err)
	}
	g := &Gateway{Node: "coap-node", Listeners: []Listener{{Conn: c, Protocol: schemas.ProtocolCoAP}}}
	testGateway(b, s, g)
	port := c.LocalAddr().(*net.UDPAddr).Port

	nc := natstest.Connect(b, s)
	sub, err := nc.QueueSubscribe(schemas.InSubject(schemas.DefaultPrefix, uint16(port))+".>", "coap", func(m *nats.Msg) {
		reply := &nats.Msg{Header: nats.Header{}}
		if m.Header.Get(schemas.HeaderCoAPRequest) == "GET /time" {
			reply.Header.Set(schemas.HeaderCoAPContentFormat, "0")
			reply.Data = coapTimeBody
		} else {
			reply.Header.Set(schemas.HeaderCoAPCode, "4.04")
		}
		m.RespondMsg(reply)
	})
	if err != nil {
		b.Fatal(err)
	}
	nc.Flush()
	b.Cleanup(func() { sub.Unsubscribe() })
	return c.LocalAddr().String()
}

// dialCoAPBench dials addr with go-coap's UDP client, allowing
// coapInFlight outstanding requests (NSTART) on the socket.
func dialCoAPBench(addr string) (*client.Conn, error) {
	return coapudp.Dial(addr,
		options.WithBlockwise(true, blockwise.SZX1024, 10*time.Second),
		options.WithTransmission(coapInFlight, 2*time.Second, 4))
}

// getTime sends GET /time on co and checks the answer.
func getTime(ctx context.Context, co *client.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, coapRequestTimeout)
	defer cancel()
	resp, err := co.Get(ctx, "/time")
	if err != nil {
		return err
	}
	defer co.ReleaseMessage(resp)
	body, err := resp.ReadBody()
	if err != nil {
		return err
	}
	if resp.Code() != codes.Content || !bytes.Equal(body, coapTimeBody) {
		return fmt.Errorf("answer %v %q", resp.Code(), body)
	}
	return nil
}

// coapRound is the shared state of one b.N round: it hands out request
// numbers, records latencies and counts losses.
type coapRound struct {
	b      *testing.B
	ctx    context.Context
	cancel context.CancelFunc
	next   atomic.Int64 // request numbers handed out
	lost   atomic.Int64
	mu     sync.Mutex // guards lat
	lat    []time.Duration
}

func newCoAPRound(b *testing.B) *coapRound {
	ctx, cancel := context.WithTimeout(context.Background(), coapRunLimit)
	return &coapRound{b: b, ctx: ctx, cancel: cancel, lat: make([]time.Duration, 0, b.N)}
}

// claim reports whether another request may be sent: fewer than b.N were
// handed out, the round is within coapRunLimit, and most were not lost.
func (r *coapRound) claim() bool {
	if r.ctx.Err() != nil {
		return false
	}
	if r.lost.Load() > int64(r.b.N/2) {
		r.cancel()
		return false
	}
	return r.next.Add(1) <= int64(r.b.N)
}

// do sends one request on co and records its latency in lat, or a loss.
func (r *coapRound) do(co *client.Conn, lat *[]time.Duration) {
	start := time.Now()
	if err := getTime(r.ctx, co); err != nil {
		r.lost.Add(1)
		return
	}
	*lat = append(*lat, time.Since(start))
}

// run starts coapWorkers goroutines running work and reports the round.
func (r *coapRound) run(work func(lat *[]time.Duration)) {
	b := r.b
	defer r.cancel()
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range coapWorkers {
		wg.Go(func() {
			lat := make([]time.Duration, 0, b.N/coapWorkers+1)
			work(&lat)
			r.mu.Lock()
			r.lat = append(r.lat, lat...)
			r.mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	lost := r.lost.Load()
	switch {
	case lost > int64(b.N/2):
		b.Fatalf("%d of %d requests lost: the setup is broken", lost, b.N)
	case errors.Is(r.ctx.Err(), context.DeadlineExceeded):
		b.Fatalf("round cut at %v after %d of %d requests", coapRunLimit, len(r.lat), b.N)
	}
	slices.Sort(r.lat)
	pct := func(p float64) float64 {
		if len(r.lat) == 0 {
			return 0
		}
		return float64(r.lat[int(p*float64(len(r.lat)-1))].Microseconds())
	}
	b.ReportMetric(float64(len(r.lat))/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(pct(0.50), "p50-us")
	b.ReportMetric(pct(0.99), "p99-us")
	b.ReportMetric(float64(lost), "lost")
}

// coapLongLived spreads b.N requests over coapSockets sockets dialled
// before the timer starts, coapInFlight goroutines on each.
func coapLongLived(b *testing.B, addr string) {
	conns := make([]*client.Conn, coapSockets)
	for i := range conns {
		co, err := dialCoAPBench(addr)
		if err != nil {
			b.Fatal(err)
		}
		defer co.Close()
		// Make sure the path works before timing it.
		if err := getTime(context.Background(), co); err != nil {
			b.Fatalf("socket %d: %v", i, err)
		}
		conns[i] = co
	}
	r := newCoAPRound(b)
	var worker atomic.Int64
	r.run(func(lat *[]time.Duration) {
		co := conns[int(worker.Add(1)-1)%coapSockets]
		for r.claim() {
			r.do(co, lat)
		}
	})
}

// coapShortLived sends b.N requests, coapShortBatch at a time on a socket
// dialled for them and closed after them.
func coapShortLived(b *testing.B, addr string) {
	co, err := dialCoAPBench(addr)
	if err != nil {
		b.Fatal(err)
	}
	err = getTime(context.Background(), co) // make sure the path works
	co.Close()
	if err != nil {
		b.Fatal(err)
	}
	r := newCoAPRound(b)
	r.run(func(lat *[]time.Duration) {
		for r.claim() {
			co, err := dialCoAPBench(addr)
			if err != nil {
				r.lost.Add(1)
				continue
			}
			r.do(co, lat)
			for i := 1; i < coapShortBatch && r.claim(); i++ {
				r.do(co, lat)
			}
			co.Close()
		}
	})
}
