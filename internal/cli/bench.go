package cli

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/bench/suite"
	"github.com/udpgate/udpgate/internal/config"
)

// benchUsage is the synopsis of `udpgate bench`.
const benchUsage = `usage: udpgate bench [flags] URL      load a target and report rate, latency and loss
       udpgate bench suite [flags]    the performance suite on loopback; udpgate bench suite -h
       udpgate bench faults [flags]   the fault suite on loopback; udpgate bench faults -h
  URL: udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY], rpc://HOST:PORT/SERVICE/METHOD
       or ws://HOST:PORT[/PATH]/SERVICE/METHOD (long-lived WebSocket connections, several
       calls in flight on each: by default one connection per 64)
  Closed loop (-c requests in flight) unless -rate sets an open loop; -duration or -count ends it.`

// newBenchCmd is `udpgate bench`: one load against a target; its
// subcommands run the suites.
func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench [flags] URL",
		Args:  cobra.ExactArgs(1),
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
	fs.IntVar(&cfg.Sockets, "sockets", 0, "source sockets in use at once (default: one per request in flight; ws://: one connection per 64; 8 in an open loop)")
	fs.IntVar(&cfg.Short, "short", 0, "short-lived sockets: a new socket (source port) after this many requests (0: keep them)")
	payload := fs.String("payload", "", "request payload: the datagram after an 8-byte request id (udp), the CoAP payload, the RPC params as JSON")
	size := fs.Int("size", 0, "udp: pad the payload with 'x' to this many bytes, request id included")
	fs.DurationVar(&cfg.Timeout, "timeout", bench.DefaultTimeout, "a request unanswered this long is lost")
	fs.StringVar(&cfg.Method, "method", "get", "CoAP method: get, post, put, delete, fetch, patch or ipatch")
	fs.BoolVar(&cfg.NoReply, "no-reply", false, "expect no replies: count what was sent (closed loop: -c senders as fast as they can)")
	sources := fs.String("sources", "", "local addresses to send from, in turn: comma-separated addresses or prefixes such as 127.0.1.0/24 (default: the system's choice)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cacert := fs.String("cacert", "", "wss://: trust the certificates of this PEM file (a self-signed listener's) instead of the system's roots")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if len(args) != 1 || cfg.Concurrency < 1 || cfg.Rate < 0 || cfg.Duration < 0 || cfg.Count < 0 ||
			cfg.Sockets < 0 || cfg.Short < 0 || cfg.Timeout <= 0 || *size < 0 || *size > 65507 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		cfg.Target = args[0]
		if *cacert != "" {
			var err error
			if cfg.TLS, err = trusting(*cacert); err != nil {
				fmt.Fprintf(stderr, "bench: %v\n", err)
				return errUsage
			}
		}
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

// suiteLong is the description of `udpgate bench suite`.
const suiteLong = `Starts an embedded NATS server with JetStream (file storage in a temporary
directory), a gateway and the built-in workers on loopback, in this process,
and runs the cases back to back, --reps times (median reported), then the
open80 cases and gateway-memory once. UDPGATE_* variables tune the gateway as
for udpgate run; the suite sets its own store, ports and node, and turns the
listeners' guard off (no rate or amplification limit) except for
gateway-memory. The nginx-udp cases run nginx (PATH or /usr/sbin/nginx, with
its stream module) and are skipped without it.
Cases: `

// newSuiteCmd is `udpgate bench suite`.
func newSuiteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "suite",
		Short: "the performance suite: gateway vs baselines on loopback, in this process",
		Long:  suiteLong + strings.Join(suite.CaseNames(), ", "),
		Args:  cobra.NoArgs,
	}
	var o suite.Options
	fs := cmd.Flags()
	fs.DurationVar(&o.Duration, "duration", 3*time.Second, "duration of each case")
	fs.IntVar(&o.Reps, "reps", 3, "repetitions of each case (the median is reported)")
	cases := fs.String("cases", "", "comma-separated cases to run (default: all)")
	fs.DurationVar(&o.NoLossDuration, "no-loss-duration", 30*time.Second, "duration of the open80 cases")
	fs.IntVar(&o.Addresses, "addresses", 100000, "distinct client addresses of gateway-memory (127.16.0.1 and up)")
	fs.DurationVar(&o.Timeout, "timeout", bench.DefaultTimeout, "a request unanswered this long is lost")
	fs.IntVar(&o.LongWarmUp, "long-warmup", suite.DefaultLongWarmUp, "requests each long-lived CoAP socket sends, unmeasured, before its case is measured (at most 65536 minus what the case sends)")
	fs.Float64Var(&o.IngestRate, "ingest-rate", 0, "the highest rate, datagrams per second, that gateway-ingest's search tries (0: 1.25 x the js-publish rate, 200,000 without it)")
	asJSON := fs.Bool("json", false, "print the report as JSON on standard output")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (gateway, NATS server, workers and generator) to this file")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if o.Duration <= 0 || o.Reps < 1 || o.NoLossDuration <= 0 || o.Addresses < 1 || o.Addresses > 1<<22 || o.LongWarmUp < 1 || o.LongWarmUp > 60000 || o.Timeout <= 0 || o.IngestRate < 0 {
			return usageErrorf(cmd, "--duration, --reps, --no-loss-duration, --timeout and --addresses must be positive (--addresses at most 4194304), --long-warmup 1..60000")
		}
		o.Cases = config.SplitList(*cases)
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
		cfg, err := config.Load()
		if err != nil {
			return err
		}
		cfg.LogLevel = max(cfg.LogLevel, slog.LevelWarn)
		if isTerminal(stderr) {
			o.Progress = stderr
		}
		report, err := suite.Run(ctx, cfg, newLogger(stderr, cfg), o)
		if errors.Is(err, suite.ErrUnknownCase) {
			return usageErrorf(cmd, "%v", err)
		}
		if err != nil {
			return fmt.Errorf("bench suite: %w", err)
		}
		if *asJSON {
			return report.WriteJSON(stdout)
		}
		fmt.Fprintf(stdout, "udpgate bench suite: %s per case, median of %d; %d CPUs (%s), %s\n",
			o.Duration, o.Reps, runtime.NumCPU(), bench.CPUModel(), runtime.Version())
		return report.WriteText(stdout)
	}
	return cmd
}
