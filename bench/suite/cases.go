package suite

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/bench/nginx"
	"github.com/udpgate/udpgate/gateway"
)

// rawPayload is a raw request's payload after its 8-byte id.
var rawPayload = bytes.Repeat([]byte("x"), suitePayload-8)

// startEcho starts a plain Go UDP echo server on loopback (bench.Echo: one
// goroutine, one reused buffer) and returns its address and a function
// that stops it and waits for it.
func startEcho() (netip.AddrPort, func(), error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { (&bench.Echo{Conn: c}).Serve(ctx) })
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), func() { cancel(); wg.Wait() }, nil
}

// udpEcho loads a plain Go UDP echo server, started for the case.
func (s *suite) udpEcho(ctx context.Context, inFlight int) (bench.Sample, error) {
	addr, stop, err := startEcho()
	if err != nil {
		return bench.Sample{}, err
	}
	defer stop()
	return s.loadSample(ctx, bench.Config{Target: "udp://" + addr.String(), Concurrency: inFlight, Payload: rawPayload})
}

// nginxUDP loads nginx's stream module proxying UDP to a plain Go UDP echo
// server (udp-echo's), both started for the case, as gateway-raw is
// loaded (bench/nginx/udp-proxy.conf is nginx's configuration). Without
// nginx or its stream module the case is skipped.
func (s *suite) nginxUDP(ctx context.Context, inFlight int) (bench.Sample, error) {
	if _, err := nginx.Find(); err != nil {
		return bench.Sample{}, skipError{err}
	}
	addr, stop, err := startEcho()
	if err != nil {
		return bench.Sample{}, err
	}
	defer stop()
	p, err := nginx.Start(ctx, nginx.Config{Upstream: addr})
	if errors.Is(err, nginx.ErrNoStream) {
		return bench.Sample{}, skipError{err}
	}
	if err != nil {
		return bench.Sample{}, err
	}
	defer p.Close()
	return s.loadSample(ctx, bench.Config{Target: "udp://" + p.Addr.String(), Concurrency: inFlight, Payload: rawPayload})
}

// coapLoad is the long-lived (8 sockets x 8 in flight, after warmUp
// requests per socket) or short-lived (64 sockets in flight, a new one
// every 4 requests) CoAP GET load.
func coapLoad(target string, short bool, warmUp int) bench.Config {
	if short {
		return bench.Config{Target: target, Concurrency: suiteInFlight, Short: suiteShortBatch}
	}
	return bench.Config{Target: target, Concurrency: suiteInFlight, Sockets: suiteCoAPSocket, Warmup: warmUp * suiteCoAPSocket}
}

// coapDirect loads go-coap's own UDP server (default options, a mux
// answering GET /time), started for the case.
func (s *suite) coapDirect(ctx context.Context, short bool) (bench.Sample, error) {
	l, err := coapnet.NewListenUDP("udp4", "127.0.0.1:0")
	if err != nil {
		return bench.Sample{}, err
	}
	r := mux.NewRouter()
	r.HandleFunc("/time", func(w mux.ResponseWriter, _ *mux.Message) {
		w.SetResponse(codes.Content, message.TextPlain, bytes.NewReader(coapTimeBody))
	})
	srv := coapudp.NewServer(options.WithMux(r))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Stop()
		l.Close() // in case Serve had not yet taken it when Stop ran
		<-done
	}()
	return s.loadSample(ctx, coapLoad("coap://"+l.LocalAddr().String()+"/time", short, s.warmUp))
}

// gatewayRaw loads the raw listener answered by the echo worker, in
// direct delivery, or by the echo worker in durable delivery (a JetStream
// pull consumer). After gateway-raw's load it also measures
// capture_bytes_per_msg.
func (s *suite) gatewayRaw(ctx context.Context, durable bool, inFlight int) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	port := e.rawPort(durable)
	dropped := e.workerDropped()
	sample, err := s.loadSample(ctx, bench.Config{Target: "udp://" + port.String(), Concurrency: inFlight, Payload: rawPayload})
	if n := e.workerDropped() - dropped; n > 0 {
		sample.Extra = map[string]float64{"worker_dropped": float64(n)}
	}
	if err != nil || durable || inFlight != suiteInFlight {
		return sample, err
	}
	perMsg, err := s.captureBytesPerMsg(ctx, e, e.echo)
	if err != nil {
		if ctx.Err() != nil {
			return sample, err
		}
		s.noteOf["gateway-raw"] = "capture_bytes_per_msg not measured: " + err.Error()
		return sample, nil
	}
	if sample.Extra == nil {
		sample.Extra = map[string]float64{}
	}
	sample.Extra["capture_bytes_per_msg"] = perMsg
	s.noteOf["gateway-raw"] = fmt.Sprintf("the capture stream's bytes per message, on %d requests of %d bytes sent after the measurement", captureSample, suitePayload)
	return sample, nil
}

// captureSample is the number of requests captureBytesPerMsg sends.
const captureSample = 1000

// captureBytesPerMsg measures what the capture stream stores per 64-byte
// raw datagram, on a sample of its own: once the stream is quiet, it sends
// captureSample raw requests of suitePayload bytes to port (64 in flight),
// waits for the stream to be quiet again, and divides the growth of its
// State.Bytes by the growth of its State.Msgs. JetStream's Bytes counts
// each message's subject, headers and payload and the file store's record
// overhead (about 30 bytes).
func (s *suite) captureBytesPerMsg(ctx context.Context, e *suiteEnv, port netip.AddrPort) (float64, error) {
	before, err := e.settle(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := s.load(ctx, bench.Config{Target: "udp://" + port.String(), Concurrency: suiteInFlight, Count: captureSample, Payload: rawPayload}); err != nil {
		return 0, err
	}
	after, err := e.settle(ctx)
	if err != nil {
		return 0, err
	}
	added := after.LastSeq - before.LastSeq
	if added == 0 {
		return 0, errors.New("no message stored")
	}
	if after.Msgs != before.Msgs+added {
		// The stream's limits (UDPGATE_STREAM_MAX_BYTES) dropped old
		// messages meanwhile: the growth of Bytes is not the sample's.
		return 0, fmt.Errorf("%d messages stored but the stream grew by %d", added, after.Msgs-before.Msgs)
	}
	return float64(after.Bytes-before.Bytes) / float64(after.Msgs-before.Msgs), nil
}

func (s *suite) gatewayCoAP(ctx context.Context, short bool) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	return s.loadSample(ctx, coapLoad("coap://"+e.coap.String()+"/time", short, s.warmUp))
}

func (s *suite) gatewayRPC(ctx context.Context) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	return s.loadSample(ctx, bench.Config{
		Target:      "rpc://" + e.rpc.String() + "/InterestingPlaces/GetRandom",
		Payload:     []byte(`{"limit": 2}`),
		Concurrency: suiteInFlight,
	})
}

// gatewayWS loads the ws listener with gateway-rpc's calls (GetRandom,
// answered by the places worker) on suiteWSConns long-lived WebSocket
// connections, suiteInFlight calls in flight in all.
func (s *suite) gatewayWS(ctx context.Context) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	s.noteOf["gateway-ws"] = fmt.Sprintf("%d connections, %d calls in flight on each", suiteWSConns, suiteInFlight/suiteWSConns)
	return s.loadSample(ctx, bench.Config{
		Target:      "ws://" + e.ws.String() + "/InterestingPlaces/GetRandom",
		Payload:     []byte(`{"limit": 2}`),
		Concurrency: suiteInFlight,
		Sockets:     suiteWSConns,
	})
}

// gatewayRawOpen80 is the no-loss check of gateway-raw-open80 (durable:
// gateway-raw-durable-open80): an open loop at 80% of the rate of
// gateway-raw (gateway-raw-durable) measured so far, measured now if it
// was not.
func (s *suite) gatewayRawOpen80(ctx context.Context, durable bool) (bench.Sample, error) {
	base, name := "gateway-raw", "gateway-raw-open80"
	if durable {
		base, name = "gateway-raw-durable", "gateway-raw-durable-open80"
	}
	rate := s.medianRate(base)
	if rate == 0 {
		sample, err := s.gatewayRaw(ctx, durable, suiteInFlight)
		if err != nil {
			return sample, err
		}
		rate = sample.Rate
		s.noteOf[name] = base + " measured once for it"
	}
	if rate == 0 {
		return bench.Sample{}, errors.New(base + " answered nothing")
	}
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	port := e.rawPort(durable)
	listener := strconv.Itoa(int(port.Port())) + "/raw"
	before, dropped := e.Gateway.Stats(), e.workerDropped()
	res, err := s.load(ctx, bench.Config{
		Target: "udp://" + port.String(), Rate: 0.8 * rate, Duration: s.noLoss,
		Sockets: suiteInFlight, Payload: rawPayload,
	})
	if err != nil {
		return bench.Sample{}, err
	}
	after := e.Gateway.Stats()
	note := fmt.Sprintf("open loop at %.0f req/s (0.8 x %s) for %s", 0.8*rate, base, s.noLoss)
	if drops := dropsBetween(before, after, listener); drops != "" {
		note += "; the gateway dropped " + drops
	}
	if n := e.workerDropped() - dropped; n > 0 {
		note += fmt.Sprintf("; the workers' subscriptions dropped %d (slow consumers)", n)
	}
	if res.Behind > 0 {
		note += fmt.Sprintf("; the generator fell %d requests behind", res.Behind)
	}
	if n := s.noteOf[name]; n != "" {
		note += "; " + n
	}
	s.noteOf[name] = note
	sample := bench.SampleOf(res)
	sample.Lost += res.Behind // due but never sent counts against the check
	sample.Extra = map[string]float64{"rate_asked": 0.8 * rate, "behind": float64(res.Behind)}
	return sample, nil
}

// The gateway-ingest search: ingestProbes open loops of ingestProbeShare of
// the suite's duration each (ingestMinProbe at least), the first at an
// eighth of the ceiling, then halving the rate while every rate tried lost
// datagrams, bisecting (geometrically) between the highest rate stored
// without loss and the lowest one that lost once both are known; the
// ceiling counts as lossy without being tried. Six probes narrow an 8x
// range to about 7%.
const (
	ingestProbes     = 6
	ingestProbeShare = 3 // a probe lasts the suite's duration / 3
	ingestMinProbe   = 100 * time.Millisecond
	ingestMinCatchUp = 50 * time.Millisecond
	ingestSockets    = 8
)

// ingestProbe is one paced run of gateway-ingest.
type ingestProbe struct {
	rate   float64 // paced, datagrams per second
	sent   int64
	stored int64 // by the end of the catch-up time
	behind int64 // due but not sent (the generator fell behind)
	errors int64
	ok     bool // every datagram sent was stored in time, and all were sent
}

// gatewayIngest searches for the highest paced rate at which the gateway
// stores every datagram sent to a raw listener no worker consumes
// (reply=off), up to a ceiling of -ingest-rate, or 1.25 x the js-publish
// rate (200,000/s if it did not run). A probe passes when the capture
// stream holds every datagram sent (the growth of its last sequence, which
// counts each message stored even if the stream's limits drop old ones)
// within a tenth of the probe's duration after the last one, and the
// generator kept the pace. The case's rate is the highest rate that
// passed; sent and lost are that probe's.
func (s *suite) gatewayIngest(ctx context.Context) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	ceiling := s.ingestRate
	if ceiling == 0 {
		ceiling = 1.25 * s.medianRate("js-publish")
	}
	if ceiling == 0 {
		ceiling = 200000
	}
	d := max(s.duration/ingestProbeShare, ingestMinProbe)
	var (
		best, lowest ingestProbe // the highest rate that passed, the lowest probed
		bad          = ceiling   // the lowest rate that lost (the ceiling, untried)
		tried        []string
		totalSent    int64
	)
	rate := ceiling / 8
	for range ingestProbes {
		p, err := s.probeIngest(ctx, e, rate, d)
		if err != nil {
			return bench.Sample{}, err
		}
		totalSent += p.sent
		if lowest.rate == 0 || p.rate < lowest.rate {
			lowest = p
		}
		verdict := "stored all"
		if p.ok {
			best = p
		} else {
			bad = rate
			verdict = fmt.Sprintf("stored %d of %d", p.stored, p.sent)
			if p.behind > 0 {
				verdict += fmt.Sprintf(", %d behind", p.behind)
			}
		}
		tried = append(tried, fmt.Sprintf("%.0f/s %s", rate, verdict))
		if best.rate == 0 {
			rate /= 2
		} else {
			rate = math.Sqrt(best.rate * bad)
		}
	}
	note := fmt.Sprintf("the highest paced rate stored without loss, searched up to %.0f/s in %d probes of %s (%s)",
		ceiling, ingestProbes, d, strings.Join(tried, "; "))
	found := best.rate
	if found == 0 {
		note = "no rate probed was stored without loss; " + note
		best = lowest
	}
	s.noteOf["gateway-ingest"] = note
	return bench.Sample{
		Rate: found, Sent: best.sent, Lost: best.sent - best.stored, Errors: best.errors,
		Extra: map[string]float64{"ceiling": ceiling, "probe_s": d.Seconds(), "probes": ingestProbes, "probes_sent": float64(totalSent)},
	}, nil
}

// probeIngest sends datagrams to the ingest listener at rate for d, then
// waits for the capture stream to hold them all, a tenth of d at most
// (ingestMinCatchUp at least). After a probe that lost some, it waits
// for the stream to stop growing, so that the next probe starts with the
// gateway idle.
func (s *suite) probeIngest(ctx context.Context, e *suiteEnv, rate float64, d time.Duration) (ingestProbe, error) {
	before, err := e.streamState(ctx)
	if err != nil {
		return ingestProbe{}, err
	}
	res, err := s.load(ctx, bench.Config{
		Target: "udp://" + e.ingest.String(), NoReply: true, Rate: rate, Duration: d, Sockets: ingestSockets, Payload: rawPayload,
	})
	if err != nil {
		return ingestProbe{}, err
	}
	p := ingestProbe{rate: rate, sent: res.Sent, behind: res.Behind, errors: res.Errors}
	catchUp := time.Now().Add(max(d/10, ingestMinCatchUp))
	for {
		st, err := e.streamState(ctx)
		if err != nil {
			return p, err
		}
		p.stored = int64(st.LastSeq - before.LastSeq)
		if p.stored >= p.sent || !time.Now().Before(catchUp) {
			break
		}
		if err := bench.Pause(ctx, 5*time.Millisecond); err != nil {
			return p, err
		}
	}
	p.ok = p.stored >= p.sent && p.sent > 0 && p.behind == 0 && p.errors == 0
	if !p.ok {
		if _, err := e.settle(ctx); err != nil {
			return p, err
		}
	}
	return p, nil
}

// jsPublish measures JetStream asynchronous publishes of 100-byte messages
// to a stream on file storage, on the suite's NATS server, with at most
// UDPGATE_MAX_INFLIGHT unacknowledged (as ingress): acknowledgements per
// second, and the latency from publish to acknowledgement.
func (s *suite) jsPublish(ctx context.Context) (bench.Sample, error) {
	e, err := s.start(ctx)
	if err != nil {
		return bench.Sample{}, err
	}
	const stream, subject = "UDPGATE_BENCH_JS", "udpgatebench.js"
	js, err := jetstream.New(e.Conn, jetstream.WithPublishAsyncMaxPending(s.cfg.MaxInFlight))
	if err != nil {
		return bench.Sample{}, err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{subject}, Storage: jetstream.FileStorage, Replicas: 1, MaxBytes: 1 << 30,
	}); err != nil {
		return bench.Sample{}, err
	}
	defer js.DeleteStream(context.WithoutCancel(ctx), stream)

	type published struct {
		f  jetstream.PubAckFuture
		at time.Time
	}
	pending := make(chan published, s.cfg.MaxInFlight)
	var (
		h                   bench.Histogram
		acked, lost, failed int64
		lastAck             time.Time
	)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		timer := time.NewTimer(s.timeout)
		defer timer.Stop()
		for p := range pending {
			timer.Reset(max(s.timeout-time.Since(p.at), 0))
			select {
			case <-p.f.Ok():
				lastAck = time.Now()
				h.Record(lastAck.Sub(p.at))
				acked++
			case <-p.f.Err():
				failed++
			case <-timer.C:
				lost++
			}
		}
	}()
	msg := bytes.Repeat([]byte("x"), suiteJSMessage)
	var sent, errs int64
	start := time.Now()
	end := start.Add(s.duration)
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		f, err := js.PublishAsync(subject, msg)
		if err != nil {
			errs++
			continue
		}
		sent++
		pending <- published{f, now}
	}
	close(pending)
	<-collected
	elapsed := max(lastAck.Sub(start), s.duration)
	l := h.Latency()
	return bench.Sample{Rate: float64(acked) / elapsed.Seconds(), P50: l.P50, P99: l.P99, Sent: sent, Lost: lost, Errors: errs + failed}, nil
}

// dropsBetween describes what the gateway dropped on listener between two
// snapshots of its counters, by reason ("" if nothing).
func dropsBetween(before, after gateway.Stats, listener string) string {
	b, a := before.Ingress[listener], after.Ingress[listener]
	eb, ea := before.EgressByListener[listener], after.EgressByListener[listener]
	var parts []string
	for _, d := range []struct {
		what string
		n    uint64
	}{
		{"in the kernel (receive buffer full)", a.KernelDrops - b.KernelDrops},
		{"queue full", a.QueueFull - b.QueueFull},
		{"table full", a.TableFull - b.TableFull},
		{"listener's share of the table full", a.ListenerFull - b.ListenerFull},
		{"publish failed", a.PublishFailed - b.PublishFailed},
		// Capture gaps: a direct group still got the request; a durable
		// group did not.
		{"capture copies not published (too many in flight)", a.InFlight - b.InFlight},
		{"capture copies refused or unacknowledged", a.CaptureFailed - b.CaptureFailed},
		{"NATS down", a.NATSDown - b.NATSDown},
		{"unanswered by the deadline", ea.NoAnswer - eb.NoAnswer},
		{"late replies", ea.Late - eb.Late},
		{"send errors", ea.SendErrors - eb.SendErrors},
	} {
		if d.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", d.n, d.what))
		}
	}
	return strings.Join(parts, ", ")
}

// gatewayMemory sends one CoAP GET /time from each of s.addresses distinct
// client addresses (127.16.0.1 and up, a short-lived socket each) to the
// coap listener of a gateway started afresh, then reports this process's
// resident memory (VmRSS) and Go heap in use after a GC. The gateway runs
// in this process, so the figures include the NATS server, the workers and
// the generator (and whatever the Go runtime keeps from earlier cases).
func (s *suite) gatewayMemory(ctx context.Context) (bench.Sample, error) {
	// A fresh gateway and NATS server, so that the figures are not those
	// left by the cases before, with the guard configured as for udpgate
	// run: its per-source table is part of what 100,000 sources cost.
	s.close()
	s.guardOn = true
	e, err := s.start(ctx)
	s.guardOn = false
	if err != nil {
		return bench.Sample{}, err
	}
	rssBefore, heapBefore := memory()
	srcs := make([]netip.Addr, 0, s.addresses)
	for i := 0; len(srcs) < s.addresses; i++ {
		a := netip.AddrFrom4([4]byte{127, byte(16 + i>>16), byte(i >> 8), byte(i)})
		if b := a.As4(); b[3] != 0 && b[3] != 255 {
			srcs = append(srcs, a)
		}
	}
	res, err := s.load(ctx, bench.Config{
		Target: "coap://" + e.coap.String() + "/time", Concurrency: suiteInFlight, Short: 1,
		Count: s.addresses, Sources: srcs,
	})
	if err != nil {
		return bench.Sample{}, err
	}
	srcs = nil
	rss, heap := memory()
	sample := bench.SampleOf(res)
	sample.Extra = map[string]float64{
		"addresses": float64(s.addresses), "rss_mib": rss, "heap_inuse_mib": heap,
		"rss_before_mib": rssBefore, "heap_inuse_before_mib": heapBefore,
	}
	s.noteOf["gateway-memory"] = fmt.Sprintf("%d client addresses: VmRSS %.0f MiB (before %.0f), Go heap in use %.0f MiB (before %.0f); whole process: gateway, NATS server, workers, generator",
		s.addresses, rss, rssBefore, heap, heapBefore)
	return sample, nil
}

// memory returns this process's VmRSS (0 where /proc is missing) and Go
// heap in use, in MiB, after garbage collections that return freed memory
// to the system (two: the second frees what sync.Pools held).
func memory() (rss, heap float64) {
	debug.FreeOSMemory()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap = float64(ms.HeapInuse) / (1 << 20)
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, heap
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, heap
		}
	}
	return 0, heap
}
