package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// faultsUsage is the synopsis of `udpgate bench faults`.
const faultsUsage = `usage: udpgate bench faults [flags]
  The fault suite (issue 17), on loopback, in this process: each scenario
  starts its own embedded NATS (a 3-node JetStream cluster for
  leader-stop; for leader-crash, three child processes of this program,
  one of which is killed), gateway and echo workers, loads a listener
  with an open loop (numbered datagrams, or CoAP CON requests from a
  client that retransmits; one socket, a fixed rate), injects a fault
  mid-run, and counts each request by number: sent, answered, failed
  (an error response), lost, late (answered after -timeout) and
  duplicate. The goals say which figures have a target and whether the
  run met it.
  Scenarios: ` + "%s\n"

// faultScenario is one scenario of the fault suite.
type faultScenario struct {
	name string
	run  func(f *faults, ctx context.Context) error
}

// faultScenarios are the scenarios in the order they run.
var faultScenarios = []faultScenario{
	{"gateway-stop", (*faults).gatewayStop},
	{"gateway-handover", (*faults).gatewayHandover},
	{"leader-stop", (*faults).leaderStop},
	{"leader-crash", (*faults).leaderCrash},
	{"worker-stop", (*faults).workerStop},
}

func faultScenarioNames() []string {
	var names []string
	for _, s := range faultScenarios {
		names = append(names, s.name)
	}
	return names
}

// faults is one run of `udpgate bench faults`.
type faults struct {
	cfg      config
	log      *slog.Logger
	rate     float64
	duration time.Duration // of each scenario's load
	timeout  time.Duration // a reply later than this is late
	rows     []faultRow
	goals    []bench.Goal
	live     bool
	stderr   io.Writer
}

// faultRow is one line of the report: a scenario (or one mode of it) and
// what its client counted.
type faultRow struct {
	Name      string  `json:"name"`
	Rate      float64 `json:"rate"` // asked, requests per second
	Sent      int64   `json:"sent"`
	Answered  int64   `json:"answered"` // in time, once or more
	Failed    int64   `json:"failed"`   // answered in time with an error (CoAP 4.xx, 5.xx or a reset)
	Lost      int64   `json:"lost"`     // never answered
	Late      int64   `json:"late"`     // answered only after the client's timeout
	Duplicate int64   `json:"duplicate"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	MaxUs     float64 `json:"max_us"`
	// Extra are the scenario's own figures (requests read before a
	// stop, capture retries, ...).
	Extra map[string]float64 `json:"extra,omitempty"`
	Note  string             `json:"note,omitempty"`
}

// faultsReport is the JSON document of `udpgate bench faults --json`.
type faultsReport struct {
	Scenarios []faultRow     `json:"scenarios"`
	Goals     []bench.Goal   `json:"goals"`
	Machine   map[string]any `json:"machine,omitempty"`
}

// runFaults is `udpgate bench faults`.
func runFaults(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 2 && args[0] == faultNodeArg {
		return runFaultNode(ctx, args[1], os.Stdin, stdout)
	}
	fs := flag.NewFlagSet("bench faults", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, faultsUsage, strings.Join(faultScenarioNames(), ", "))
		fs.PrintDefaults()
	}
	short := fs.Bool("short", false, "a short run for CI: 2s per scenario at 400 requests/s (unless -duration or -rate say otherwise)")
	duration := fs.Duration("duration", 0, "load of each scenario, the fault at its middle (default 16s; 2s with -short)")
	rate := fs.Float64("rate", 0, "requests per second of the open loop (default 2000; 400 with -short)")
	timeout := fs.Duration("timeout", bench.DefaultTimeout, "a reply later than this is late")
	only := fs.String("scenarios", "", "comma-separated scenarios to run (default: all)")
	asJSON := fs.Bool("json", false, "print the report as JSON on standard output")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return errUsage
	}
	if fs.NArg() != 0 || *duration < 0 || *rate < 0 || *timeout <= 0 {
		fs.Usage()
		return errUsage
	}
	if *duration == 0 {
		*duration = 16 * time.Second
		if *short {
			*duration = 2 * time.Second
		}
	}
	if *rate == 0 {
		*rate = 2000
		if *short {
			*rate = 400
		}
	}
	selected := faultScenarios
	if *only != "" {
		names := splitList(*only)
		for _, name := range names {
			if !slices.Contains(faultScenarioNames(), name) {
				fmt.Fprintf(stderr, "bench faults: unknown scenario %q (scenarios: %s)\n", name, strings.Join(faultScenarioNames(), ", "))
				return errUsage
			}
		}
		selected = slices.DeleteFunc(slices.Clone(faultScenarios), func(s faultScenario) bool { return !slices.Contains(names, s.name) })
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	cfg.LogLevel = max(cfg.LogLevel, slog.LevelError)
	cfg.Guard = guard.Config{} // the load comes from one address, faster than a source may send
	cfg.HTTPListen = ""
	f, _ := stderr.(*os.File)
	fl := &faults{
		cfg: cfg, log: newLogger(stderr, cfg), rate: *rate, duration: *duration, timeout: *timeout,
		live: f != nil && isTerminal(f), stderr: stderr,
	}
	for _, s := range selected {
		if err := ctx.Err(); err != nil {
			return err
		}
		if fl.live {
			fmt.Fprintf(stderr, "%s ...\n", s.name)
		}
		if err := s.run(fl, ctx); err != nil {
			return fmt.Errorf("bench faults: %s: %w", s.name, err)
		}
	}
	report := faultsReport{Scenarios: fl.rows, Goals: fl.goals, Machine: map[string]any{
		"go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.NumCPU(),
		"cpu": cpuModel(), "duration": duration.String(), "rate": *rate, "timeout": timeout.String(),
	}}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	fmt.Fprintf(stdout, "udpgate bench faults: %s per scenario at %.0f requests/s, timeout %s; %d CPUs (%s), %s\n",
		duration, *rate, timeout, runtime.NumCPU(), cpuModel(), runtime.Version())
	return report.writeText(stdout)
}

// writeText writes r as two tables: the scenarios, then the goals.
func (r faultsReport) writeText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tsent\tanswered\tfailed\tlost\tlate\tdup\tp50\tmax\tnotes")
	for _, s := range r.Scenarios {
		p50, maxLat := "-", "-"
		if s.Answered > 0 {
			p50, maxLat = bench.Short(time.Duration(s.P50us*1e3)), bench.Short(time.Duration(s.MaxUs*1e3))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", s.Name, s.Sent, s.Answered, s.Failed, s.Lost, s.Late, s.Duplicate, p50, maxLat, s.Note)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "target\tvalue\tgoal\t")
	for _, g := range r.Goals {
		state := "met"
		if !g.Met {
			state = "NOT MET"
		}
		fmt.Fprintf(tw, "%s\t%.4g\t%s %g\t%s\n", g.Name, g.Value, g.Op, g.Goal, state)
	}
	return tw.Flush()
}

// goal records a target and how the run fared.
func (f *faults) goal(name string, value float64, op string, target float64, measured bool) {
	met := measured
	switch op {
	case "<=":
		met = met && value <= target
	case ">=":
		met = met && value >= target
	}
	f.goals = append(f.goals, bench.Goal{Name: name, Value: value, Op: op, Goal: target, Met: met})
}

// The open-loop client.

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
		answered int64     // ids with a reply
		end      time.Time // once the sender is done: when to stop reading
		settling bool      // every request answered: waiting for duplicates
	)
	for {
		select {
		case <-l.done:
			if end.IsZero() {
				end = time.Now().Add(l.timeout + faultGrace)
			}
		default:
		}
		if !end.IsZero() {
			if time.Now().After(end) || ctx.Err() != nil {
				return
			}
			if !settling && answered == l.sent.Load() {
				end, settling = time.Now().Add(200*time.Millisecond), true
			}
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

// faultEnv is a scenario's embedded NATS server and connection.
type faultEnv struct {
	dir string
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

// startFaultEnv starts an embedded NATS server with JetStream on file
// storage in a temporary directory, as `udpgate run` does.
func (f *faults) startFaultEnv() (*faultEnv, error) {
	dir, err := os.MkdirTemp("", "udpgate-faults-")
	if err != nil {
		return nil, err
	}
	e := &faultEnv{dir: dir}
	cfg := f.cfg
	cfg.DataDir = dir
	cfg.NATSListen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Node = "faults"
	if e.ns, err = startNATS(cfg); err != nil {
		e.close()
		return nil, err
	}
	if e.nc, err = nats.Connect(e.ns.ClientURL(), nats.InProcessServer(e.ns), nats.Name("udpgate bench faults")); err != nil {
		e.close()
		return nil, err
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *faultEnv) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	os.RemoveAll(e.dir)
}

// faultCfg is the configuration of a scenario's gateway: f's, on the
// embedded server, stream replicas 1.
func (f *faults) faultCfg(node string) config {
	cfg := f.cfg
	cfg.Node = node
	cfg.StreamReplicas = 1
	cfg.StreamMemory = false
	return cfg
}

// slowEcho is a handler that answers with the request after d.
func slowEcho(d time.Duration) workers.Handler {
	return workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := w.Write(r.Body)
		return err
	})
}

// serveGroup serves w until stop is called (which waits for it) and
// waits until it is ready.
func serveGroup(w *workers.Server) (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	stop = func() {
		cancel()
		<-done
	}
	select {
	case <-w.Ready():
		return stop, nil
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("worker %s: %v", w.Group, err)
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("worker %s: not ready after 30s", w.Group)
	}
}

// faultListener is a raw listener on 127.0.0.1 on any free port.
var faultListener = listener{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: schemas.ProtocolRaw}

// faultConcurrency is the handlers running at once in a scenario's echo
// instance: enough for 2,000 requests/s of 100 ms each.
const faultConcurrency = 512

// gatewayStop: a raw listener answered by a direct echo group whose
// handler takes 50 ms, under an open loop; at the middle of the load the
// gateway is stopped gracefully (its Serve ctx cancelled: it stops
// reading, then answers what it has read). Every request it read before
// it stopped must be answered.
func (f *faults) gatewayStop(ctx context.Context) error {
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-stop")
	g, err := newGateway(ctx, cfg, f.log, e.nc, []listener{faultListener}, nil)
	if err != nil {
		return err
	}
	port := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	name := strconv.Itoa(int(port.Port())) + "/raw"
	gctx, stopGateway := context.WithCancel(context.WithoutCancel(ctx))
	defer stopGateway()
	served := make(chan error, 1)
	go func() { served <- g.Serve(gctx) }()
	if err := waitReady(gctx, g.Ready()); err != nil {
		return err
	}
	stopWorker, err := serveGroup(newWorker(cfg, f.log, e.js, "echo-slow", []string{schemas.InSubject(cfg.Prefix, port.Port())}, slowEcho(50*time.Millisecond), faultConcurrency))
	if err != nil {
		stopGateway()
		<-served
		return err
	}
	defer stopWorker()

	l, err := startLoad(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port.Port()), f.rate, f.duration, f.timeout)
	if err != nil {
		return err
	}
	pause(ctx, f.duration/2)
	stopAt := time.Since(l.start)
	stopGateway()
	if err := <-served; err != nil {
		l.wait()
		return fmt.Errorf("gateway: %w", err)
	}
	drained := time.Since(l.start) - stopAt
	read := int(g.Stats().Ingress[name].Received)
	l.wait()

	// The gateway read the first requests, in the order they were sent
	// from one socket: ids below read.
	readRow := l.count("gateway-stop-read", func(id int, _ time.Duration) bool { return id < read })
	unread := l.count("gateway-stop-unread", func(id int, _ time.Duration) bool { return id >= read })
	before := l.count("", func(_ int, at time.Duration) bool { return at < stopAt })
	maps.Copy(readRow.Extra, map[string]float64{
		"read_before_stop": float64(read), "sent_before_stop": float64(before.Sent),
		"drain_ms": float64(drained.Milliseconds()),
	})
	readRow.Note = fmt.Sprintf("stopped at %s: the gateway had read %d requests (%d were sent by then), answered %d of them, and returned %s after the stop",
		stopAt.Round(time.Millisecond), read, before.Sent, readRow.Answered, drained.Round(time.Millisecond))
	unread.Note = "sent after the gateway stopped reading: not read, lost as expected, no target"
	f.rows = append(f.rows, readRow, unread)
	f.goal("gateway-stop lost among read", float64(readRow.Lost+readRow.Late), "<=", 0, read > 0)
	return nil
}

// gatewayHandover: a raw listener answered by a direct echo group whose
// handler takes 50 ms, under an open loop; at the middle of the load a
// new gateway takes the running one's socket over, as `udpgate gateway`
// does with UDPGATE_HANDOVER (the same functions: takeOver, startGateway,
// offerSockets), and the old one drains and stops. Every request must be
// answered, once.
func (f *faults) gatewayHandover(ctx context.Context) error {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		f.rows = append(f.rows, faultRow{Name: "gateway-handover", Note: "skipped: a hand-over needs a Unix system"})
		return nil
	}
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-handover")
	cfg.Handover = filepath.Join(e.dir, "handover.sock")
	port, err := freeUDPPortOn()
	if err != nil {
		return err
	}
	cfg.Listeners = []listener{{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Protocol: schemas.ProtocolRaw}}
	stopWorker, err := serveGroup(newWorker(cfg, f.log, e.js, "echo-slow", []string{schemas.InSubject(cfg.Prefix, port)}, slowEcho(50*time.Millisecond), faultConcurrency))
	if err != nil {
		return err
	}
	defer stopWorker()
	old, err := f.gatewayProcess(ctx, cfg, e.ns)
	if err != nil {
		return err
	}
	defer old.stop()

	l, err := startLoad(ctx, cfg.Listeners[0].Addr, f.rate, f.duration, f.timeout)
	if err != nil {
		return err
	}
	pause(ctx, f.duration/2)
	at := time.Since(l.start)
	replacement, err := f.gatewayProcess(ctx, cfg, e.ns)
	if err != nil {
		l.wait()
		return fmt.Errorf("the new gateway: %w", err)
	}
	defer replacement.stop()
	took := time.Since(l.start) - at
	select {
	case <-old.done:
		if old.err != nil {
			l.wait()
			return fmt.Errorf("the old gateway: %w", old.err)
		}
	case <-time.After(30 * time.Second):
		l.wait()
		return errors.New("the old gateway did not stop after the hand-over")
	}
	stopped := time.Since(l.start) - at
	name := strconv.Itoa(int(port)) + "/raw"
	oldRead := old.run.g.Stats().Ingress[name].Received
	l.wait()
	newRead := replacement.run.g.Stats().Ingress[name].Received

	r := l.count("gateway-handover", allRequests)
	maps.Copy(r.Extra, map[string]float64{
		"takeover_ms": float64(took.Milliseconds()), "old_stopped_ms": float64(stopped.Milliseconds()),
		"read_by_old": float64(oldRead), "read_by_new": float64(newRead),
	})
	r.Note = fmt.Sprintf("a new gateway took the socket over at %s (serving after %s; the old one read %d, the new one %d); the old one drained and stopped %s after that",
		at.Round(time.Millisecond), took.Round(time.Millisecond), oldRead, newRead, stopped.Round(time.Millisecond))
	f.rows = append(f.rows, r)
	f.goal("gateway-handover lost", float64(r.Lost+r.Late), "<=", 0, r.Sent > 0)
	f.goal("gateway-handover duplicate", float64(r.Duplicate), "<=", 0, r.Sent > 0)
	return nil
}

// freeUDPPortOn returns a UDP port free on 127.0.0.1 a moment ago.
func freeUDPPortOn() (uint16, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// gatewayProc is a gateway run as `udpgate gateway` runs it, on its own
// NATS connection.
type gatewayProc struct {
	run    *gatewayRun
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{} // closed when the run has ended, err set
	err    error
	once   sync.Once
}

// gatewayProcess starts a gateway as runGateway does with UDPGATE_HANDOVER:
// it takes the sockets of the gateway that offers them on cfg.Handover, if
// one does, serves, and offers its own in turn.
func (f *faults) gatewayProcess(ctx context.Context, cfg config, ns *server.Server) (*gatewayProc, error) {
	nc, err := nats.Connect(ns.ClientURL(), nats.Name("udpgate gateway "+cfg.Node))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	inh, taken, err := takeOver(ctx, cfg, f.log)
	if err != nil {
		cancel()
		nc.Close()
		return nil, err
	}
	run, err := startGateway(ctx, cfg, f.log, nc, cfg.Listeners, nil, inh, "gateway")
	inh.closeUnused()
	if run == nil {
		cancel()
		nc.Close()
		if err == nil {
			err = errors.New("stopped before it was ready")
		}
		return nil, err
	}
	if taken != nil {
		if err := taken.Ready(ctx); err != nil {
			f.log.Warn("bench faults: the old gateway did not stop offering its sockets", "err", err)
		}
	}
	run.grp.Go(func() error { return offerSockets(run, cfg, f.log) })
	p := &gatewayProc{run: run, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = run.grp.Wait()
	}()
	return p, nil
}

// stop stops the gateway (it drains) and waits for it.
func (p *gatewayProc) stop() {
	p.once.Do(func() {
		p.run.cancel()
		p.cancel()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
		}
		p.nc.Close()
	})
}

// leaderStop: a 3-node JetStream cluster in this process, the capture
// stream at 3 replicas, the gateway connected to a node that does not
// lead it, and two raw listeners under open loops (half the rate each):
// one answered by a direct echo group, one by a durable one (a pull
// consumer, whose leader is moved off the victim). At the middle of the
// load the server that leads the capture stream is shut down with
// nats-server's Shutdown, which steps its Raft leaders down first: a new
// leader comes within tens of milliseconds (leaderCrash kills one
// instead). The durable group must lose at most 0.1%; the direct group's
// loss is reported (a client that resends gets its answer; this one does
// not resend).
func (f *faults) leaderStop(ctx context.Context) error {
	c, err := startFaultCluster(3)
	if err != nil {
		return err
	}
	defer c.close()
	n1, n2, n3 := c.servers[0], c.servers[1], c.servers[2]
	connect := func(name string, order ...*server.Server) (*nats.Conn, error) {
		urls := make([]string, len(order))
		for i, s := range order {
			urls[i] = s.ClientURL()
		}
		return nats.Connect(strings.Join(urls, ","), nats.Name(name), nats.DontRandomize(),
			nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	}
	gnc, err := connect("udpgate bench faults gateway", n1, n2, n3)
	if err != nil {
		return err
	}
	defer gnc.Close()
	deadline := f.cfg.Deadline
	g := &gateway.Gateway{
		NATS: gnc, Node: "faults-leader", Prefix: f.cfg.Prefix,
		Stream:   ingress.StreamConfig{Replicas: 3},
		Deadline: deadline, DrainTimeout: -1, Log: f.log,
	}
	for range 2 {
		conn, err := ingress.Listen(ctx, "udp4", "127.0.0.1:0", 4<<20)
		if err != nil {
			closeListeners(g)
			return err
		}
		g.Listeners = append(g.Listeners, gateway.Listener{Conn: conn, Protocol: schemas.ProtocolRaw})
	}
	direct := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	durable := g.Listeners[1].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	stopGateway, err := serveFaultGateway(ctx, g)
	if err != nil {
		return err
	}
	defer stopGateway()
	home := c.byName(gnc.ConnectedServerName())
	if home == nil {
		return errors.New("the gateway is not connected")
	}
	var others []*server.Server
	for _, s := range c.servers {
		if s != home {
			others = append(others, s)
		}
	}
	wnc, err := connect("udpgate bench faults workers", home, others[0], others[1])
	if err != nil {
		return err
	}
	defer wnc.Close()
	wjs, err := jetstream.New(wnc)
	if err != nil {
		return err
	}
	stream := schemas.StreamIn
	wcfg := f.cfg
	wcfg.Delivery = workers.Direct
	stopDirect, err := serveGroup(newWorker(wcfg, f.log, wjs, "echo-direct", []string{schemas.InSubject(f.cfg.Prefix, direct.Port())}, slowEcho(0), 64))
	if err != nil {
		return err
	}
	defer stopDirect()
	// The durable group's consumer is created here, as the worker would
	// create it, so that its leader is known before the victim is chosen.
	wcfg.Delivery = workers.Durable
	wcfg.Stream = stream
	dw := newWorker(wcfg, f.log, wjs, "echo-durable", []string{schemas.InSubject(f.cfg.Prefix, durable.Port())}, slowEcho(0), 64)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second) // a replicated consumer elects its leader first
	_, err = wjs.CreateOrUpdateConsumer(cctx, stream, jetstream.ConsumerConfig{
		Durable: dw.Group, FilterSubjects: dw.Subjects, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy, AckWait: cmp.Or(dw.AckWait, workers.DefaultAckWait),
		MaxDeliver: workers.DefaultMaxDeliver, MaxAckPending: workers.DefaultMaxAckPending,
	})
	cancel()
	if err != nil {
		return err
	}
	isConsumerLeader := func(s *server.Server) bool {
		return s.JetStreamIsConsumerLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream, dw.Group)
	}
	cl, err := c.leaderOf(isConsumerLeader)
	if err != nil {
		return err
	}
	// The victim leads the capture stream, and is neither the gateway's
	// server (losing it takes an election while the gateway stays
	// connected) nor the consumer's leader (a pull request held by a
	// consumer leader that dies is replaced only when the client misses
	// its heartbeats, 30 s).
	isStreamLeader := func(s *server.Server) bool { return s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) }
	leader, err := c.leaderOf(isStreamLeader)
	if err != nil {
		return err
	}
	if leader == home || leader == cl {
		for _, s := range c.servers {
			if s != home && s != cl {
				leader = s
				break
			}
		}
		if err := c.stepDown(wnc, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, leader, isStreamLeader); err != nil {
			return err
		}
	}
	stopDurable, err := serveGroup(dw)
	if err != nil {
		return err
	}
	defer stopDurable()
	name := func(p netip.AddrPort) string { return strconv.Itoa(int(p.Port())) + "/raw" }

	timeout := max(f.timeout, deadline+time.Second)
	ld, err := startLoad(ctx, direct, f.rate/2, f.duration, timeout)
	if err != nil {
		return err
	}
	lu, err := startLoad(ctx, durable, f.rate/2, f.duration, timeout)
	if err != nil {
		ld.wait()
		return err
	}
	pause(ctx, f.duration/2)
	killAt := time.Since(ld.start)
	before := g.Stats()
	leader.Shutdown()
	leader.WaitForShutdown()
	var elected time.Duration
	if _, err := c.leaderOf(func(s *server.Server) bool {
		return s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
	}); err == nil {
		elected = time.Since(ld.start) - killAt
	}
	ld.wait()
	lu.wait()
	after := g.Stats()
	for _, m := range []struct {
		mode string
		l    *faultLoad
		port netip.AddrPort
	}{{"direct", ld, direct}, {"durable", lu, durable}} {
		r := m.l.count("leader-stop-"+m.mode, allRequests)
		b, a := before.Ingress[name(m.port)], after.Ingress[name(m.port)]
		maps.Copy(r.Extra, map[string]float64{
			"capture_retried": float64(a.CaptureRetried), "capture_failed": float64(a.CaptureFailed),
			"capture_retried_after_kill": float64(a.CaptureRetried - b.CaptureRetried),
			"publish_failed":             float64(a.PublishFailed + a.NATSDown),
			"election_ms":                float64(elected.Milliseconds()), "lost_pct": 100 * float64(r.Lost+r.Late) / float64(max(r.Sent, 1)),
		})
		r.Note = fmt.Sprintf("%s (stream leader) shut down at %s, a new leader after %s; the gateway (on %s) retried %d capture copies, %d not captured by the deadline",
			leader.Name(), killAt.Round(time.Millisecond), elected.Round(time.Millisecond), home.Name(), a.CaptureRetried, a.CaptureFailed)
		if m.mode == "direct" {
			r.Note += "; no target: a raw client that resends gets an answer, this one does not resend"
		}
		f.rows = append(f.rows, r)
		if m.mode == "durable" {
			f.goal("leader-stop-durable lost %", r.Extra["lost_pct"], "<=", 0.1, r.Sent > 0)
		}
	}
	return nil
}

// faultCluster is a NATS cluster with JetStream on loopback, in this
// process (internal/natstest.RunCluster, without a test).
type faultCluster struct {
	dir     string
	servers []*server.Server // n1, n2, ...
}

// startFaultCluster starts n clustered servers with JetStream on
// 127.0.0.1, each with its own store, and waits until every one follows
// a meta leader that knows them all.
func startFaultCluster(n int) (_ *faultCluster, err error) {
	dir, err := os.MkdirTemp("", "udpgate-faults-cluster-")
	if err != nil {
		return nil, err
	}
	c := &faultCluster{dir: dir}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	// Every server lists every route: reserve the cluster ports first.
	routes := make([]*url.URL, n)
	for i := range routes {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		routes[i] = &url.URL{Scheme: "nats-route", Host: l.Addr().String()}
		l.Close()
	}
	for i := range n {
		port, _ := strconv.Atoi(routes[i].Port())
		s, err := server.NewServer(&server.Options{
			ServerName: "n" + strconv.Itoa(i+1), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: filepath.Join(dir, strconv.Itoa(i+1)),
			Cluster: server.ClusterOpts{Name: "faults", Host: "127.0.0.1", Port: port},
			Routes:  routes, NoLog: true, NoSigs: true,
		})
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		go s.Start()
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		if !s.ReadyForConnections(10 * time.Second) {
			return nil, fmt.Errorf("cluster: %s not ready after 10s", s.Name())
		}
	}
	return c, c.waitFor("every server current and healthy behind a meta leader that knows them all", func() bool {
		var l *server.Server
		for _, s := range c.servers {
			if s.JetStreamIsLeader() {
				l = s
			}
		}
		if l == nil || len(l.JetStreamClusterPeers()) != n {
			return false
		}
		for _, s := range c.servers {
			if !s.JetStreamIsCurrent() || s.Healthz(nil).Status != "ok" {
				return false
			}
		}
		return true
	}, 30*time.Second)
}

func (c *faultCluster) close() {
	for _, s := range c.servers {
		s.Shutdown()
		s.WaitForShutdown()
	}
	os.RemoveAll(c.dir)
}

func (c *faultCluster) byName(name string) *server.Server {
	for _, s := range c.servers {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// leaderOf waits until a running server is what is says, and returns it.
func (c *faultCluster) leaderOf(is func(*server.Server) bool) (*server.Server, error) {
	var l *server.Server
	err := c.waitFor("a leader", func() bool {
		for _, s := range c.servers {
			if s.Running() && is(s) {
				l = s
				return true
			}
		}
		return false
	}, 30*time.Second)
	return l, err
}

// stepDown asks the leader behind subject to hand over to preferred, and
// waits until preferred leads.
func (c *faultCluster) stepDown(nc *nats.Conn, subject string, preferred *server.Server, leads func(*server.Server) bool) error {
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred.Name()}})
	for try := 0; ; try++ {
		msg, err := nc.Request(subject, req, 10*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", subject, err)
		}
		var resp struct {
			Success bool `json:"success"`
		}
		if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Success {
			return fmt.Errorf("%s: %s", subject, msg.Data)
		}
		// A new election may pick another server: ask again.
		err = c.waitFor(preferred.Name()+" leading", func() bool { return leads(preferred) }, 5*time.Second)
		if err == nil || try == 3 {
			return err
		}
	}
}

// waitFor polls cond until it holds, limit at most.
func (c *faultCluster) waitFor(what string, cond func() bool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// workerStopHandler is how long worker-stop's handler takes.
const workerStopHandler = 100 * time.Millisecond

// workerStop: a raw listener answered by a durable echo group of two
// instances whose handler takes 100 ms, under an open loop; at the
// middle of the load one instance is stopped gracefully (it naks what it
// holds, and the other instance takes it at once). No request may be
// answered later than its usual latency (the 99th percentile before the
// stop: what the machine's own jitter allows) plus the handler's time plus
// 100 ms.
func (f *faults) workerStop(ctx context.Context) error {
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-worker")
	cfg.Delivery = workers.Durable
	g, err := newGateway(ctx, cfg, f.log, e.nc, []listener{faultListener}, nil)
	if err != nil {
		return err
	}
	g.DrainTimeout = -1
	port := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	stopGateway, err := serveFaultGateway(ctx, g)
	if err != nil {
		return err
	}
	defer stopGateway()
	var (
		stops     []func()
		instances []*workers.Server
	)
	for range 2 {
		w := newWorker(cfg, f.log, e.js, "echo-durable", []string{schemas.InSubject(cfg.Prefix, port.Port())}, slowEcho(workerStopHandler), faultConcurrency)
		stop, err := serveGroup(w)
		if err != nil {
			return err
		}
		stops = append(stops, stop)
		instances = append(instances, w)
	}
	// Stopped before the gateway, deferred above: the last instance.
	defer stops[1]()

	l, err := startLoad(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port.Port()), f.rate, f.duration, f.timeout)
	if err != nil {
		stops[0]()
		return err
	}
	pause(ctx, f.duration/2)
	stopAt := time.Since(l.start)
	stops[0]()
	stopped := time.Since(l.start) - stopAt
	l.wait()

	r := l.count("worker-stop", allRequests)
	before := l.count("", func(id int, at time.Duration) bool { return at < stopAt && l.replies[id] > 0 && l.first[id] < stopAt })
	// Affected: the requests answered after the stop began, or never.
	after := l.count("", func(id int, at time.Duration) bool { return l.replies[id] == 0 || l.first[id] >= stopAt })
	usual := time.Duration(before.P99us) * time.Microsecond
	// The worst latency after the stop, late replies included; a request
	// never answered counts as the longest the client waited.
	var (
		worst time.Duration
		slow  int // answered more than a second late
	)
	for id := range int(l.sent.Load()) {
		lat := time.Duration(l.first[id] - time.Duration(l.sentAt[id].Load()))
		switch {
		case l.replies[id] == 0:
			lat = f.timeout + faultGrace
		case l.first[id] < stopAt:
			continue
		}
		worst = max(worst, lat)
		if lat > usual+time.Second {
			slow++
		}
	}
	retried := instances[0].Stats().Retried
	maps.Copy(r.Extra, map[string]float64{
		"usual_p99_ms": float64(usual.Microseconds()) / 1e3, "max_after_stop_ms": float64(worst.Microseconds()) / 1e3,
		"stop_ms": float64(stopped.Milliseconds()), "given_back": float64(retried), "over_1s_late": float64(slow),
	})
	r.Note = fmt.Sprintf("one of two instances stopped at %s (in %s), giving back %d requests; latency before %s (p99), at most %s for the %d requests answered after the stop began",
		stopAt.Round(time.Millisecond), stopped.Round(time.Millisecond), retried, usual.Round(time.Millisecond), worst.Round(time.Millisecond), after.Sent)
	if slow > 0 {
		r.Note += fmt.Sprintf("; %d more than 1 s later than usual (redelivered after the ack wait?)", slow)
	}
	f.rows = append(f.rows, r)
	f.goal("worker-stop max latency after stop - p99 before (ms)", float64((worst-usual).Microseconds())/1e3, "<=",
		float64((workerStopHandler + 100*time.Millisecond).Milliseconds()), before.Sent > 0 && after.Sent > 0)
	return nil
}

// serveFaultGateway serves g until the returned stop is called (which
// waits for Serve to return), and returns once g is ready.
func serveFaultGateway(ctx context.Context, g *gateway.Gateway) (stop func(), err error) {
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- g.Serve(gctx) }()
	stop = func() {
		cancel()
		<-served
	}
	if err := waitReady(gctx, g.Ready()); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}
