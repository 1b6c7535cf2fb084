package cli

import (
	"github.com/spf13/cobra"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"

	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
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
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

// benchUsage is the synopsis of `udpgate bench`.
const benchUsage = `usage: udpgate bench [flags] URL      load a target and report rate, latency and loss
       udpgate bench suite [flags]    the performance suite on loopback; udpgate bench suite -h
       udpgate bench faults [flags]   the fault suite on loopback; udpgate bench faults -h
  URL: udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY] or rpc://HOST:PORT/SERVICE/METHOD
  Closed loop (-c requests in flight) unless -rate sets an open loop; -duration or -count ends it.`

// newBenchCmd is `udpgate bench`: one load against a target; its
// subcommands run the suites.
func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench [flags] URL",
		Short: "load a target: requests/s, latency percentiles, loss",
		Long:  benchUsage,
	}
	cmd.AddCommand(newSuiteCmd(), newFaultsCmd())
	fs := cmd.Flags()
	var cfg bench.Config
	fs.IntVarP(&cfg.Concurrency, "concurrency", "c", 1, "requests in flight (closed loop)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: requests per second, sent on schedule whatever comes back (0: closed loop)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "send for this long (default 10s when -count is not set)")
	fs.IntVar(&cfg.Count, "count", 0, "send this many requests")
	fs.IntVar(&cfg.Sockets, "sockets", 0, "source sockets in use at once (default: one per request in flight; 8 in an open loop)")
	fs.IntVar(&cfg.Short, "short", 0, "short-lived sockets: a new socket (source port) after this many requests (0: keep them)")
	payload := fs.String("payload", "", "request payload: the datagram after an 8-byte request id (udp), the CoAP payload, the RPC params as JSON")
	size := fs.Int("size", 0, "udp: pad the payload with 'x' to this many bytes, request id included")
	fs.DurationVar(&cfg.Timeout, "timeout", bench.DefaultTimeout, "a request unanswered this long is lost")
	fs.StringVar(&cfg.Method, "method", "get", "CoAP method: get, post, put, delete, fetch, patch or ipatch")
	fs.BoolVar(&cfg.NoReply, "no-reply", false, "expect no replies: count what was sent (closed loop: -c senders as fast as they can)")
	sources := fs.String("sources", "", "local addresses to send from, in turn: comma-separated addresses or prefixes such as 127.0.1.0/24 (default: the system's choice)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if len(args) != 1 || cfg.Concurrency < 1 || cfg.Rate < 0 || cfg.Duration < 0 || cfg.Count < 0 ||
			cfg.Sockets < 0 || cfg.Short < 0 || cfg.Timeout <= 0 || *size < 0 || *size > 65507 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		cfg.Target = args[0]
		cfg.Payload = []byte(*payload)
		if strings.HasPrefix(cfg.Target, "udp:") && *size > 8+len(cfg.Payload) {
			cfg.Payload = append(cfg.Payload, bytes.Repeat([]byte("x"), *size-8-len(cfg.Payload))...)
		}
		for _, s := range config.SplitList(*sources) {
			addrs, err := parseSources(s)
			if err != nil {
				fmt.Fprintf(stderr, "bench: -sources: %v\n", err)
				return errUsage
			}
			cfg.Sources = append(cfg.Sources, addrs...)
		}
		live := isTerminal(stderr)
		if live {
			cfg.Progress = func(p bench.Progress) {
				fmt.Fprintf(stderr, "\r%5.0fs  sent %d  answered %d  lost %d  errors %d  ", p.Elapsed.Seconds(), p.Sent, p.Answered, p.Lost, p.Errors)
			}
		}
		res, err := bench.Run(ctx, cfg)
		if live {
			fmt.Fprint(stderr, "\r\033[K")
		}
		if errors.Is(err, bench.ErrTarget) {
			return &exitError{2, err}
		}
		if err != nil {
			return err
		}
		if *asJSON {
			err = bench.WriteJSON(stdout, res)
		} else {
			err = bench.WriteText(stdout, res)
		}
		if err != nil {
			return err
		}
		if res.Sent > 0 && res.Answered == 0 && !cfg.NoReply {
			return &exitError{1, fmt.Errorf("bench: none of %d requests was answered", res.Sent)}
		}
		return nil
	}
	return cmd
}

// parseSources parses an address, or a prefix of at most 65,536 addresses
// (IPv4 network and broadcast addresses left out).
func parseSources(s string) ([]netip.Addr, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		return []netip.Addr{a}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IP address or prefix", s)
	}
	p = p.Masked()
	if p.Addr().BitLen()-p.Bits() > 16 {
		return nil, fmt.Errorf("%q has more than 65,536 addresses", s)
	}
	var addrs []netip.Addr
	for a := p.Addr(); a.IsValid() && p.Contains(a); a = a.Next() {
		addrs = append(addrs, a)
	}
	if p.Addr().Is4() && p.Bits() < 31 {
		addrs = addrs[1 : len(addrs)-1]
	}
	return addrs, nil
}

// suiteUsage is the synopsis of `udpgate bench suite`.
const suiteUsage = `usage: udpgate bench suite [flags]
  Starts an embedded NATS server with JetStream (file storage in a temporary
  directory), a gateway and the built-in workers on loopback, in this
  process, and runs the cases back to back, -reps times (median reported),
  then the -open80 cases and gateway-memory once. UDPGATE_* variables tune
  the gateway as for udpgate run; the suite sets its own store, ports and
  node, and turns the listeners' guard off (no rate or amplification limit)
  except for gateway-memory. The nginx-udp cases run nginx (PATH or
  /usr/sbin/nginx, with its stream module) and are skipped without it.
  Cases: ` + "%s\n"

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
	{name: "gateway-raw-open80", once: true, run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRawOpen80(ctx, false) }},
	{name: "gateway-raw-durable-open80", once: true, run: func(s *suite, ctx context.Context) (bench.Sample, error) { return s.gatewayRawOpen80(ctx, true) }},
	{name: "gateway-memory", once: true, run: (*suite).gatewayMemory},
}

func suiteCaseNames() []string {
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

// suite is one run of `udpgate bench suite`.
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
	live        bool            // report each case on stderr as it ends
	stderr      io.Writer
	repsDone    int
	repsPlanned int
}

// newSuiteCmd is `udpgate bench suite`.
func newSuiteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "suite",
		Short: "the performance suite: gateway vs baselines on loopback, in this process",
		Long:  fmt.Sprintf(suiteUsage, strings.Join(suiteCaseNames(), ", ")),
	}
	fs := cmd.Flags()
	duration := fs.Duration("duration", 3*time.Second, "duration of each case")
	reps := fs.Int("reps", 3, "repetitions of each case (the median is reported)")
	cases := fs.String("cases", "", "comma-separated cases to run (default: all)")
	noLoss := fs.Duration("no-loss-duration", 30*time.Second, "duration of gateway-raw-open80")
	addresses := fs.Int("addresses", 100000, "distinct client addresses of gateway-memory (127.16.0.1 and up)")
	timeout := fs.Duration("timeout", bench.DefaultTimeout, "a request unanswered this long is lost")
	warmUp := fs.Int("long-warmup", suiteLongWarmup, "requests each long-lived CoAP socket sends, unmeasured, before its case is measured (at most 65536 minus what the case sends)")
	ingestRate := fs.Float64("ingest-rate", 0, "the highest rate, datagrams per second, that gateway-ingest's search tries (0: 1.25 x the js-publish rate, 200,000 without it)")
	asJSON := fs.Bool("json", false, "print the report as JSON on standard output")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (gateway, NATS server, workers and generator) to this file")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if len(args) != 0 || *duration <= 0 || *reps < 1 || *noLoss <= 0 || *addresses < 1 || *addresses > 1<<22 || *warmUp < 0 || *warmUp > 60000 || *timeout <= 0 || *ingestRate < 0 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		if *cpuProfile != "" {
			pf, err := os.Create(*cpuProfile)
			if err != nil {
				return fmt.Errorf("bench suite: %w", err)
			}
			defer pf.Close()
			if err := pprof.StartCPUProfile(pf); err != nil {
				return fmt.Errorf("bench suite: cpu profile: %w", err)
			}
			defer pprof.StopCPUProfile()
		}
		selected := suiteCases
		if *cases != "" {
			selected = nil
			for _, name := range config.SplitList(*cases) {
				i := slices.IndexFunc(suiteCases, func(c suiteCase) bool { return c.name == name })
				if i < 0 {
					fmt.Fprintf(stderr, "bench suite: unknown case %q (cases: %s)\n", name, strings.Join(suiteCaseNames(), ", "))
					return errUsage
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
		cfg, err := config.Load()
		if err != nil {
			return err
		}
		cfg.LogLevel = max(cfg.LogLevel, slog.LevelWarn)
		f, _ := stderr.(*os.File)
		s := &suite{
			cfg: cfg, log: newLogger(stderr, cfg), duration: *duration, noLoss: *noLoss, addresses: *addresses, warmUp: *warmUp,
			timeout: *timeout, ingestRate: *ingestRate, samples: map[string][]bench.Sample{}, noteOf: map[string]string{},
			skipped: map[string]bool{}, live: f != nil && isTerminal(f), stderr: stderr, repsPlanned: *reps,
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
		for rep := range *reps {
			s.repsDone = rep
			for _, c := range repeated {
				if err := s.runCase(ctx, c); err != nil {
					return err
				}
			}
		}
		for _, c := range once {
			if err := s.runCase(ctx, c); err != nil {
				return err
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
			"cpu": cpuModel(), "duration": duration.String(), "reps": *reps, "no_loss_duration": noLoss.String(),
			"long_warmup": *warmUp, "delivery": cfg.Delivery.String(),
		}
		if *asJSON {
			return report.WriteJSON(stdout)
		}
		fmt.Fprintf(stdout, "udpgate bench suite: %s per case, median of %d; %d CPUs (%s), %s\n",
			duration, *reps, runtime.NumCPU(), cpuModel(), runtime.Version())
		return report.WriteText(stdout)
	}
	return cmd
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
		if s.live {
			fmt.Fprintf(s.stderr, "%-8s %-20s skipped: %v\n", "", c.name, skip.reason)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("bench suite: %s: %w", c.name, err)
	}
	s.samples[c.name] = append(s.samples[c.name], sample)
	if s.live {
		rep := fmt.Sprintf("rep %d/%d", s.repsDone+1, s.repsPlanned)
		if c.once {
			rep = "once"
		}
		fmt.Fprintf(s.stderr, "%-8s %-20s %10.0f req/s  p50 %8s  p99 %8s  lost %d\n", rep, c.name, sample.Rate,
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
		if err := pause(ctx, 5*time.Millisecond); err != nil {
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

// pause waits for d or for ctx to end.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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

// cpuModel returns the CPU's model name from /proc/cpuinfo, if there is
// one.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// suiteEnv is the suite's gateway: a node (internal/node) with its
// embedded NATS server's store in a temporary directory, a gateway on five
// loopback listeners and the built-in workers, all in this process.
type suiteEnv struct {
	*node.Node
	dir    string
	stream string

	echo    netip.AddrPort // raw, echo worker (the configured delivery, direct by default)
	ingest  netip.AddrPort // raw, reply=off, no worker
	coap    netip.AddrPort // coap, coap worker
	rpc     netip.AddrPort // rpc, places worker
	durable netip.AddrPort // raw, echo worker in durable delivery
}

// start starts the suite's gateway the first time a case needs it.
func (s *suite) start(ctx context.Context) (*suiteEnv, error) {
	if s.env != nil {
		return s.env, nil
	}
	cfg := s.cfg
	if !s.guardOn {
		// The suite measures capacity: no per-source rate limit (its
		// loads come from 127.0.0.1), no amplification limit.
		cfg.Guard = guard.Config{}
	}
	e, err := startSuiteEnv(ctx, cfg, s.log)
	if err != nil {
		return nil, err
	}
	s.env = e
	return e, nil
}

func (s *suite) close() {
	if s.env != nil {
		s.env.close()
		s.env = nil
	}
}

func startSuiteEnv(ctx context.Context, cfg config.Config, log *slog.Logger) (*suiteEnv, error) {
	dir, err := os.MkdirTemp("", "udpgate-bench-")
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dir
	cfg.NATSListen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.HTTPListen = ""
	cfg.Node = "bench"
	cfg.StreamReplicas = 1
	cfg.StreamMemory = false
	cfg.DrainTimeout = -1 // between cases nothing waits for replies: stop at once
	if cfg.RcvBuf == 0 {
		// As deployed: the compose file and the Kubernetes ConfigMap
		// ask for 4 MiB (docs/operations.md).
		cfg.RcvBuf = suiteRcvBuf
	}
	// A direct worker's slow-consumer drops are counted by its Server
	// (the cases' notes report them), not printed by nats.go one by one.
	quiet := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if !errors.Is(err, nats.ErrSlowConsumer) {
			log.Warn("bench suite: nats", "err", err)
		}
	})
	loop := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)
	n, err := node.Start(context.WithoutCancel(ctx), cfg, log, node.Options{
		Listeners: []config.Listener{
			{Addr: loop, Protocol: schemas.ProtocolRaw},
			{Addr: loop, Protocol: schemas.ProtocolRaw, NoReply: true}, // ingest: captured, never answered
			{Addr: loop, Protocol: schemas.ProtocolCoAP},
			{Addr: loop, Protocol: schemas.ProtocolRPC},
			{Addr: loop, Protocol: schemas.ProtocolRaw}, // durable: the echo worker as a JetStream pull consumer
		},
		Workers: []node.Worker{
			{Name: "echo", Listener: 0},
			{Name: "coap", Listener: 2},
			{Name: "places", Listener: 3},
			// What UDPGATE_DELIVERY=durable udpgate worker echo runs,
			// whatever the delivery of the others.
			{Name: "echo", Group: "echo-durable", Listener: 4, Durable: true},
		},
		NATSOptions: []nats.Option{nats.Name("udpgate bench suite"), quiet},
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := n.Ports
	return &suiteEnv{Node: n, dir: dir, stream: cfg.Stream, echo: p[0], ingest: p[1], coap: p[2], rpc: p[3], durable: p[4]}, nil
}

// workerDropped returns the requests the workers' direct subscriptions
// have dropped so far (NATS slow consumers), all groups together.
func (e *suiteEnv) workerDropped() uint64 {
	var n uint64
	for _, w := range e.Workers {
		n += w.Stats().Dropped
	}
	return n
}

// rawPort returns the raw listener answered by the echo worker: in
// durable delivery, or in the configured one.
func (e *suiteEnv) rawPort(durable bool) netip.AddrPort {
	if durable {
		return e.durable
	}
	return e.echo
}

// streamState returns the capture stream's state.
func (e *suiteEnv) streamState(ctx context.Context) (jetstream.StreamState, error) {
	return e.StreamState(ctx, e.stream)
}

// settle waits until the capture stream stops growing (200 ms without a
// new message, 10 s at most) and returns its state.
func (e *suiteEnv) settle(ctx context.Context) (jetstream.StreamState, error) {
	last, err := e.streamState(ctx)
	if err != nil {
		return last, err
	}
	grew := time.Now()
	for deadline := grew.Add(10 * time.Second); time.Now().Before(deadline) && time.Since(grew) < 200*time.Millisecond; {
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return last, err
		}
		st, err := e.streamState(ctx)
		if err != nil {
			return last, err
		}
		if st.LastSeq != last.LastSeq {
			grew = time.Now()
		}
		last = st
	}
	return last, nil
}

// close stops the workers and the gateway, then the NATS server, and
// removes the store.
func (e *suiteEnv) close() {
	e.Close()
	os.RemoveAll(e.dir)
}
