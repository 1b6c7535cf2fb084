// Package suite is udpgate's performance suite: a gateway node (embedded
// NATS with JetStream, the gateway and the built-in workers, internal/node)
// on loopback in this process, measured against baselines from the same
// run (a Go UDP echo server, nginx's UDP proxy, JetStream publishing). The
// command is `udpgate bench suite`; docs/performance.md reports its figures.
package suite

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/internal/config"
)

// suiteCase is one case of the suite.
type suiteCase struct {
	name string
	once bool // run once after the repetitions, not -reps times
	run  func(s *suite, ctx context.Context) (bench.Sample, error)
}

// suiteCases are the cases in the order they run.
var suiteCases = []suiteCase{
	{name: "udp-echo", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.udpEcho(ctx, 64) }},
	{name: "udp-echo-n1", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.udpEcho(ctx, 1) }},
	{name: "nginx-udp", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.nginxUDP(ctx, 64) }},
	{name: "nginx-udp-n1", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.nginxUDP(ctx, 1) }},
	{name: "js-publish", run: (*suite).jsPublish},
	{name: "coap-direct-long", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.coapDirect(ctx, false) }},
	{name: "coap-direct-short", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.coapDirect(ctx, true) }},
	{name: "gateway-raw", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRaw(ctx, false, 64) }},
	{name: "gateway-raw-n1", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRaw(ctx, false, 1) }},
	{name: "gateway-raw-durable", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRaw(ctx, true, 64) }},
	{name: "gateway-raw-durable-n1", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRaw(ctx, true, 1) }},
	{name: "gateway-coap-long", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayCoAP(ctx, false) }},
	{name: "gateway-coap-short", run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayCoAP(ctx, true) }},
	{name: "gateway-ingest", run: (*suite).gatewayIngest},
	{name: "gateway-rpc", run: (*suite).gatewayRPC},
	{name: "gateway-ws", run: (*suite).gatewayWS},
	{name: "gateway-observe", run: (*suite).gatewayObserve},
	{name: "gateway-raw-open80", once: true, run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRawOpen80(ctx, false) }},
	{name: "gateway-raw-durable-open80", once: true, run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRawOpen80(ctx, true) }},
	{name: "gateway-memory", once: true, run: (*suite).gatewayMemory},
}

// CaseNames returns the names of the suite's cases, in the order they run.
func CaseNames() []string {
	var names []string
	for _, c := range suiteCases {
		names = append(names, c.name)
	}
	return names
}

// The loads of the suite's cases.
const (
	suiteInFlight   = 64 // the udp, raw, rpc and short CoAP cases
	suiteCoAPSocket = 8  // long-lived CoAP sockets, 8 requests in flight each
	suiteWSConns    = 8  // long-lived WebSocket connections, 8 calls in flight each
	suiteShortBatch = 4  // requests per short-lived CoAP socket
	// suiteLongWarmup is how many requests each long-lived CoAP socket
	// sends before its case is measured: a long-lived client's history,
	// which go-coap's server keeps per peer (see docs/performance.md).
	suiteLongWarmup = 10000
	suitePayload    = 64 // bytes of a raw request, request id included
	suiteJSMessage  = 100
	suiteRcvBuf     = 4 << 20 // the gateway's SO_RCVBUF unless UDPGATE_RCVBUF sets it
)

// coapTimeBody is the answer of the direct CoAP server's GET /time, as long
// as the built-in worker's.
var coapTimeBody = []byte("2026-11-23T00:00:00Z")

// Options of a run of the suite. Zero values take the defaults of
// `udpgate bench suite`.
type Options struct {
	Duration       time.Duration // of each case (3s)
	Reps           int           // repetitions of each case; the median is reported (3)
	Cases          []string      // to run, in any order (all)
	NoLossDuration time.Duration // of the open80 cases (30s)
	Addresses      int           // distinct client addresses of gateway-memory (100,000)
	Timeout        time.Duration // a request unanswered this long is lost (bench.DefaultTimeout)
	// LongWarmUp is how many requests each long-lived CoAP socket sends,
	// unmeasured, before its case is measured (DefaultLongWarmUp).
	LongWarmUp int
	// IngestRate is the highest rate, datagrams per second, that
	// gateway-ingest's search tries (0: 1.25 x the js-publish rate,
	// 200,000 without it).
	IngestRate float64
	// Progress, if not nil, gets a line per case as it ends.
	Progress io.Writer
}

// Payload is the size of a raw request of the suite, its 8-byte id
// included.
const Payload = suitePayload

// DefaultLongWarmUp is Options.LongWarmUp's default.
const DefaultLongWarmUp = suiteLongWarmup

// ErrUnknownCase is returned by Run for a case name that is not the
// suite's.
var ErrUnknownCase = errors.New("unknown case")

// Run runs the suite with the gateway configuration cfg (its store, ports
// and node are the suite's own) and returns its report.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, o Options) (bench.Report, error) {
	o.Duration = cmp.Or(o.Duration, 3*time.Second)
	o.Reps = cmp.Or(o.Reps, 3)
	o.NoLossDuration = cmp.Or(o.NoLossDuration, 30*time.Second)
	o.Addresses = cmp.Or(o.Addresses, 100000)
	o.Timeout = cmp.Or(o.Timeout, bench.DefaultTimeout)
	o.LongWarmUp = cmp.Or(o.LongWarmUp, DefaultLongWarmUp)
	selected := suiteCases
	if len(o.Cases) > 0 {
		selected = nil
		for _, name := range o.Cases {
			i := slices.IndexFunc(suiteCases, func(c suiteCase) bool { return c.name == name })
			if i < 0 {
				return bench.Report{}, fmt.Errorf("%w %q (cases: %s)", ErrUnknownCase, name, strings.Join(CaseNames(), ", "))
			}
			if !slices.ContainsFunc(selected, func(c suiteCase) bool { return c.name == name }) {
				selected = append(selected, suiteCases[i])
			}
		}
		// Run in the suite's order: later cases use earlier ones' rates.
		slices.SortFunc(selected, func(a, b suiteCase) int {
			return slices.IndexFunc(suiteCases, func(c suiteCase) bool { return c.name == a.name }) -
				slices.IndexFunc(suiteCases, func(c suiteCase) bool { return c.name == b.name })
		})
	}
	s := &suite{
		cfg: cfg, log: log, duration: o.Duration, noLoss: o.NoLossDuration, addresses: o.Addresses, warmUp: o.LongWarmUp,
		timeout: o.Timeout, ingestRate: o.IngestRate, samples: map[string][]bench.Sample{}, noteOf: map[string]string{},
		skipped: map[string]bool{}, progress: o.Progress, repsPlanned: o.Reps,
	}
	defer s.close()
	var repeated, once []suiteCase
	for _, c := range selected {
		if c.once {
			once = append(once, c)
		} else {
			repeated = append(repeated, c)
		}
	}
	for rep := range o.Reps {
		s.repsDone = rep
		for _, c := range repeated {
			if err := s.runCase(ctx, c); err != nil {
				return bench.Report{}, err
			}
		}
	}
	for _, c := range once {
		if err := s.runCase(ctx, c); err != nil {
			return bench.Report{}, err
		}
	}
	var results []bench.Case
	for _, c := range selected {
		bc := bench.Summarize(c.name, s.samples[c.name])
		bc.Note = s.noteOf[c.name]
		bc.Skipped = s.skipped[c.name]
		if v, ok := bc.Extra["capture_bytes_per_msg"]; ok {
			bc.Note = fmt.Sprintf("capture_bytes_per_msg %.0f; %s", v, bc.Note)
		}
		results = append(results, bc)
	}
	report := bench.NewReport(results)
	report.Machine = map[string]any{
		"go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.NumCPU(),
		"cpu": bench.CPUModel(), "duration": o.Duration.String(), "reps": o.Reps, "no_loss_duration": o.NoLossDuration.String(),
		"long_warmup": o.LongWarmUp, "delivery": cfg.Delivery.String(),
	}
	return report, nil
}

// suite is one run of the suite.
type suite struct {
	cfg         config.Config
	log         *slog.Logger
	duration    time.Duration
	noLoss      time.Duration
	addresses   int
	warmUp      int // requests per long-lived CoAP socket before measuring
	timeout     time.Duration
	ingestRate  float64   // 0: from js-publish
	env         *suiteEnv // started on first need
	guardOn     bool      // start env with the configured guard, not none
	samples     map[string][]bench.Sample
	noteOf      map[string]string
	skipped     map[string]bool // cases that cannot run here; noteOf says why
	progress    io.Writer       // a line per case as it ends; nil: none
	repsDone    int
	repsPlanned int
}

// skipError is returned by a case that cannot run here, a peer it needs
// not being installed: the report lists the case as skipped, with the
// reason, and never a figure.
type skipError struct{ reason error }

func (e skipError) Error() string { return "skipped: " + e.reason.Error() }
func (e skipError) Unwrap() error { return e.reason }

// runCase runs c once and records its sample, or that it was skipped.
func (s *suite) runCase(ctx context.Context, c suiteCase) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.skipped[c.name] {
		return nil // skipped in an earlier repetition: the reason stands
	}
	sample, err := c.run(s, ctx)
	if skip := (skipError{}); errors.As(err, &skip) {
		s.skipped[c.name] = true
		s.noteOf[c.name] = skip.reason.Error()
		if s.progress != nil {
			fmt.Fprintf(s.progress, "%-8s %-20s skipped: %v\n", "", c.name, skip.reason)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	s.samples[c.name] = append(s.samples[c.name], sample)
	if s.progress != nil {
		rep := fmt.Sprintf("rep %d/%d", s.repsDone+1, s.repsPlanned)
		if c.once {
			rep = "once"
		}
		fmt.Fprintf(s.progress, "%-8s %-20s %10.0f req/s  p50 %8s  p99 %8s  lost %d\n", rep, c.name, sample.Rate,
			bench.Short(sample.P50), bench.Short(sample.P99), sample.Lost)
	}
	return nil
}

// medianRate returns the median rate of the samples of case name so far,
// 0 if it has none.
func (s *suite) medianRate(name string) float64 {
	return bench.Summarize(name, s.samples[name]).Rate
}

// load runs the load generator against target for the case's duration.
func (s *suite) load(ctx context.Context, cfg bench.Config) (bench.Result, error) {
	if cfg.Duration == 0 && cfg.Count == 0 {
		cfg.Duration = s.duration
	}
	cfg.Timeout = s.timeout
	return bench.Run(ctx, cfg)
}

func (s *suite) loadSample(ctx context.Context, cfg bench.Config) (bench.Sample, error) {
	res, err := s.load(ctx, cfg)
	if err != nil {
		return bench.Sample{}, err
	}
	return bench.SampleOf(res), nil
}
