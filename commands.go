package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/handover"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
	lambdabridge "github.com/udpgate/udpgate/workers/lambda"
)

// builtinListeners are the listeners `udpgate run` opens by default, each
// answered by a built-in worker. `udpgate worker NAME` consumes the same
// port's subject unless UDPGATE_WORKER_SUBJECTS says otherwise.
var builtinListeners = []struct {
	worker   string
	port     uint16
	protocol string
}{
	{"echo", 9000, schemas.ProtocolRaw},
	{"time", 9001, schemas.ProtocolRaw},
	{"coap", 5683, schemas.ProtocolCoAP},
	{"places", 7000, schemas.ProtocolRPC},
}

// runAll is `udpgate run`: an embedded NATS server with JetStream, the
// gateway on the default listeners plus UDPGATE_LISTENERS, and the built-in
// workers, until ctx is cancelled.
func runAll(ctx context.Context, cfg config, log *slog.Logger, stdout io.Writer) error {
	ns, err := startNATS(cfg)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns), nats.Name("udpgate run "+cfg.Node))
	if err != nil {
		return fmt.Errorf("run: connect to the embedded NATS server: %w", err)
	}
	defer nc.Close()

	listeners := cfg.Listeners
	type builtinWorker struct{ name, protocol string }
	workerOf := map[uint16]builtinWorker{}
	for _, b := range builtinListeners {
		workerOf[b.port] = builtinWorker{b.worker, b.protocol}
		if !hasPort(listeners, b.port) { // a listener the user put on this port replaces the default
			listeners = append(listeners, listener{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), b.port), Protocol: b.protocol})
		}
	}
	var subs gateway.SubscriptionLister
	if cfg.DiscoverySubs {
		subs = gateway.EmbeddedSubscriptions(ns)
	}
	run, err := startGateway(ctx, cfg, log, nc, listeners, subs, nil, "run")
	if run == nil {
		return err
	}
	defer run.cancel()
	ctx, grp, js, obs, metricsURL := run.ctx, run.grp, run.js, run.obs, run.metricsURL
	var servers []*workers.Server
	for _, b := range builtinListeners {
		if l, ok := listenerOn(listeners, b.port); !ok || l.Protocol != b.protocol {
			continue // the user gave the port to another protocol
		}
		h, _ := builtin.Lookup(b.worker)
		servers = append(servers, newWorker(cfg, log, js, b.worker, builtin.Subjects(b.worker, cfg.Prefix, b.port), h, cfg.WorkerConc))
	}
	if err := observe.RegisterWorkers(obs.Registry, servers...); err != nil {
		run.cancel()
		grp.Wait()
		return fmt.Errorf("run: metrics: %w", err)
	}
	// The built-in groups stop after the gateway, which answers its
	// pending exchanges first when it stops (UDPGATE_DRAIN_TIMEOUT).
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	go func() {
		<-run.served
		wcancel()
	}()
	for _, w := range servers {
		obs.AddCheck("worker "+w.Group, observe.WorkerBound(w, 0))
		grp.Go(func() error { return w.Serve(wctx) })
	}
	// Announce only once every worker's consumer exists: a group sees only
	// requests that arrive after its consumer is created.
	for _, w := range servers {
		select {
		case <-w.Ready():
		case <-ctx.Done():
			return grp.Wait()
		}
	}
	// The gateway answers /.well-known/core from what the groups
	// announce: have it ask them now, not at its next interval.
	if err := run.g.Discover(ctx); err != nil {
		return grp.Wait()
	}

	fmt.Fprintf(stdout, "udpgate %s: node %s\n", "run", cfg.Node)
	fmt.Fprintf(stdout, "  NATS      %s (JetStream store %s): outside workers connect here\n", ns.ClientURL(), cfg.DataDir)
	if metricsURL != "" {
		fmt.Fprintf(stdout, "  metrics   %s/metrics, %s/healthz, %s/readyz\n", metricsURL, metricsURL, metricsURL)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	for _, l := range listeners {
		who := "no built-in worker: attach yours to this subject"
		if w, ok := workerOf[l.Addr.Port()]; ok && w.protocol == l.Protocol {
			who = "worker " + w.name
		}
		subject := schemas.InSubject(cfg.Prefix, l.Addr.Port())
		switch l.Protocol {
		case schemas.ProtocolCoAP:
			subject += ".METHOD.PATH..."
		case schemas.ProtocolRPC:
			subject += ".SERVICE.METHOD"
		}
		fmt.Fprintf(tw, "  udp %s\t%s\t-> %s\t%s\n", l.Addr, l.Protocol, subject, who)
	}
	tw.Flush()
	for i, hint := range tryHints(listeners) {
		if i == 0 {
			fmt.Fprintf(stdout, "try: %s   (Ctrl-C stops)\n", hint)
		} else {
			fmt.Fprintf(stdout, "     %s\n", hint)
		}
	}
	return grp.Wait()
}

// tryHints returns a `send` command for the first listener of each
// protocol, for the start-up banner.
func tryHints(ls []listener) []string {
	var hints []string
	seen := map[string]bool{}
	for _, l := range ls {
		if seen[l.Protocol] {
			continue
		}
		seen[l.Protocol] = true
		host := l.Addr.Addr()
		if host.IsUnspecified() {
			host = netip.MustParseAddr("127.0.0.1")
		}
		hp := netip.AddrPortFrom(host, l.Addr.Port()).String()
		switch l.Protocol {
		case schemas.ProtocolRaw:
			hints = append(hints, "go run . send udp://"+hp+" hello")
		case schemas.ProtocolCoAP:
			hints = append(hints, "go run . send coap://"+hp+"/time")
		case schemas.ProtocolRPC:
			hints = append(hints, "go run . send rpc://"+hp+`/InterestingPlaces/GetRandom '{"limit": 2}'`)
		}
	}
	return hints
}

func hasPort(ls []listener, port uint16) bool {
	_, ok := listenerOn(ls, port)
	return ok
}

func listenerOn(ls []listener, port uint16) (listener, bool) {
	for _, l := range ls {
		if l.Addr.Port() == port {
			return l, true
		}
	}
	return listener{}, false
}

// startNATS starts the embedded NATS server with JetStream for `run`.
func startNATS(cfg config) (*server.Server, error) {
	// Bind once ourselves: nats-server reports a busy port only in its log.
	probe, err := net.Listen("tcp", cfg.NATSListen.String())
	if err != nil {
		return nil, fmt.Errorf("run: embedded NATS cannot listen on %s (set UDPGATE_NATS_LISTEN): %w", cfg.NATSListen, err)
	}
	probe.Close()
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("run: UDPGATE_DATA_DIR %q: %w", cfg.DataDir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("run: UDPGATE_DATA_DIR: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "udpgate-" + schemas.EscapeToken(cfg.Node),
		Host:       cfg.NATSListen.Addr().String(),
		Port:       natsPort(cfg.NATSListen.Port()),
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("run: embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("run: embedded NATS on %s did not start within 30s (is %s usable?)", cfg.NATSListen, dir)
	}
	return ns, nil
}

// natsPort maps port 0 (any free port) to nats-server's RANDOM_PORT; its
// own 0 means 4222.
func natsPort(p uint16) int {
	if p == 0 {
		return server.RANDOM_PORT
	}
	return int(p)
}

// newGateway binds the listeners and returns the gateway that serves them.
func newGateway(ctx context.Context, cfg config, log *slog.Logger, nc *nats.Conn, listeners []listener, inh *inherited) (*gateway.Gateway, error) {
	g := &gateway.Gateway{
		NATS:   nc,
		Node:   cfg.Node,
		Prefix: cfg.Prefix,
		Stream: ingress.StreamConfig{
			Name:     cfg.Stream,
			MaxAge:   cfg.StreamMaxAge,
			MaxBytes: cfg.StreamMaxBytes,
			Replicas: cfg.StreamReplicas,
			Memory:   cfg.StreamMemory,
			Async:    cfg.StreamAsync,
		},
		Replies: ingress.StreamConfig{
			Name:     cfg.RepliesStream,
			MaxAge:   cfg.StreamMaxAge,
			MaxBytes: cfg.StreamMaxBytes,
			Replicas: cfg.StreamReplicas,
			Memory:   cfg.StreamMemory,
			Async:    cfg.StreamAsync,
		},
		Deadline:    cfg.Deadline,
		MaxDatagram: cfg.MaxDatagram,
		Queue:       cfg.Queue,
		MaxInFlight: cfg.MaxInFlight,
		MaxPending:  cfg.MaxPending,
		CoAP: coap.Config{
			Piggyback: cfg.CoAPPiggyback,
			BlockSize: cfg.CoAPBlockSize,
			MaxBody:   cfg.CoAPMaxBody,
		},
		ListenerMaxPending: cfg.ListenerShare,
		DiscoveryInterval:  cfg.Discovery,
		DrainTimeout:       cfg.DrainTimeout,
		Log:                log,
	}
	for _, l := range listeners {
		gd, err := guard.New(cfg.guardConfig(l))
		if err != nil {
			closeListeners(g)
			return nil, fmt.Errorf("listener %s: %w", l, err)
		}
		c, err := inh.udp(l)
		if c == nil && err == nil {
			c, err = ingress.Listen(ctx, l.network(), l.Addr.String(), cfg.RcvBuf)
		}
		if err != nil {
			for _, b := range g.Listeners {
				b.Conn.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", l, err)
		}
		g.Listeners = append(g.Listeners, gateway.Listener{Conn: c, Protocol: l.Protocol, Guard: gd, NoReply: l.NoReply})
	}
	return g, nil
}

// closeListeners closes the sockets of a gateway that will not Serve.
func closeListeners(g *gateway.Gateway) {
	for _, l := range g.Listeners {
		l.Conn.Close()
	}
}

// startHTTP returns the process's metrics and health server, serving on
// cfg.HTTPListen in grp until ctx ends, and its base URL; an empty
// UDPGATE_HTTP_LISTEN serves nothing (the URL is empty) and the server only
// collects.
func startHTTP(ctx context.Context, cfg config, log *slog.Logger, grp *errgroup.Group) (*observe.Server, string, error) {
	srv, u, _, err := startHTTPOn(ctx, cfg, log, grp, nil)
	return srv, u, err
}

// startHTTPOn is startHTTP on ln if not nil (a listener handed over by
// another process); it returns the listener it serves.
func startHTTPOn(ctx context.Context, cfg config, log *slog.Logger, grp *errgroup.Group, ln net.Listener) (*observe.Server, string, net.Listener, error) {
	srv := &observe.Server{Registry: observe.NewRegistry(), Log: log}
	if cfg.HTTPListen == "" {
		return srv, "", nil, nil
	}
	if ln == nil {
		var err error
		if ln, err = observe.Listen(cfg.HTTPListen); err != nil {
			return nil, "", nil, fmt.Errorf("%w (set UDPGATE_HTTP_LISTEN; empty disables)", err)
		}
	}
	u := observe.URL(ln)
	grp.Go(func() error { return srv.Serve(ctx, ln) })
	log.Info("http: serving /metrics, /healthz and /readyz", "url", u)
	return srv, u, ln, nil
}

// observeGateway registers a gateway's metrics and readiness checks; call
// it before g.Serve.
func observeGateway(obs *observe.Server, g *gateway.Gateway, nc *nats.Conn, js jetstream.JetStream, cfg config) error {
	if err := observe.RegisterNATS(obs.Registry, nc); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := observe.RegisterGateway(obs.Registry, g); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	obs.AddCheck("nats", observe.NATSConnected(nc))
	obs.AddCheck("gateway", observe.GatewayServing(g))
	obs.SetStatus(func(ctx context.Context) any { return g.Status(ctx) })
	obs.AddCheck("capture", observe.StreamReachable(js, cfg.Stream, 0))
	return nil
}

// observeWorker registers a worker process's metrics and readiness checks.
func observeWorker(obs *observe.Server, w *workers.Server, nc *nats.Conn) error {
	if err := observe.RegisterNATS(obs.Registry, nc); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := observe.RegisterWorkers(obs.Registry, w); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	obs.AddCheck("nats", observe.NATSConnected(nc))
	obs.AddCheck("worker "+w.Group, observe.WorkerBound(w, 0))
	return nil
}

// connectNATS connects to cfg.NATSURL for a production process, with the
// credentials and TLS settings of cfg.NATSAuth. It fails at once, naming
// the URL and the variables to check, if no server answers or the server
// refuses it; after that it reconnects forever.
func connectNATS(cfg config, name string) (*nats.Conn, error) {
	opts, err := natsOptions(cfg.NATSAuth)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1), // publishing while disconnected fails at once instead of queueing
	)
	nc, err := nats.Connect(string(cfg.NATSURL), opts...)
	if err != nil {
		if hint := natsRefusal(cfg.NATSAuth, string(cfg.NATSURL), err); hint != "" {
			return nil, fmt.Errorf("cannot connect to NATS at %s (UDPGATE_NATS_URL): %w: %s", cfg.NATSURL, err, hint)
		}
		return nil, fmt.Errorf("cannot connect to NATS at %s (UDPGATE_NATS_URL): %w", cfg.NATSURL, err)
	}
	return nc, nil
}

// redactURLs hides passwords and tokens in a comma-separated URL list.
func redactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// runGateway is `udpgate gateway`.
func runGateway(ctx context.Context, cfg config, log *slog.Logger, stdout io.Writer) error {
	if len(cfg.Listeners) == 0 {
		return errors.New("gateway: UDPGATE_LISTENERS is empty: name at least one listener, like 9000/raw")
	}
	nc, err := connectNATS(cfg, "udpgate gateway "+cfg.Node)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	defer nc.Close()
	var subs gateway.SubscriptionLister
	if cfg.DiscoverySubs {
		subs = gateway.ClusterSubscriptions(nc)
	}
	// A gateway running on this host hands its sockets over, if
	// UDPGATE_HANDOVER names where it offers them: nothing sent to the
	// ports is lost while this process replaces it.
	inh, taken, err := takeOver(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	run, err := startGateway(ctx, cfg, log, nc, cfg.Listeners, subs, inh, "gateway")
	inh.closeUnused()
	if run == nil {
		return err
	}
	defer run.cancel()
	if taken != nil {
		if err := taken.Ready(ctx); err != nil {
			log.Warn("gateway: took the sockets over, but the process that had them did not stop offering them", "err", err)
		} else {
			log.Info("gateway: took the sockets over from the running gateway, which now stops", "sockets", len(taken.Sockets))
		}
	}
	if cfg.Handover != "" {
		run.grp.Go(func() error { return offerSockets(run, cfg, log) })
	}
	fmt.Fprintf(stdout, "udpgate gateway: node %s, NATS %s, replies on %s\n", cfg.Node, redactURLs(nc.ConnectedUrlRedacted()), schemas.ReplySubject(cfg.Prefix, cfg.Node))
	for _, l := range cfg.Listeners {
		fmt.Fprintf(stdout, "  udp %s %s -> %s\n", l.Addr, l.Protocol, schemas.InSubject(cfg.Prefix, l.Addr.Port()))
	}
	if run.metricsURL != "" {
		fmt.Fprintf(stdout, "  metrics %s/metrics, %s/healthz, %s/readyz\n", run.metricsURL, run.metricsURL, run.metricsURL)
	}
	return run.grp.Wait()
}

// gatewayRun is a gateway serving in an errgroup with the HTTP endpoint
// of its metrics and health checks: the first part to fail stops the others.
type gatewayRun struct {
	ctx        context.Context // the group's: done when any part fails or the caller's ends
	cancel     context.CancelFunc
	grp        *errgroup.Group
	js         jetstream.JetStream
	obs        *observe.Server
	metricsURL string
	g          *gateway.Gateway
	served     chan struct{} // closed once the gateway has stopped (drained)
	http       net.Listener  // nil when UDPGATE_HTTP_LISTEN is empty
}

// startGateway binds listeners, starts the HTTP endpoint and serves a
// gateway on them, which lists subscriptions with subs, and returns once
// it is ready. It returns a nil run if
// the gateway stopped first, with the error that stopped it (nil if ctx
// ended); setup errors are prefixed with cmd.
func startGateway(ctx context.Context, cfg config, log *slog.Logger, nc *nats.Conn, listeners []listener, subs gateway.SubscriptionLister, inh *inherited, cmd string) (*gatewayRun, error) {
	g, err := newGateway(ctx, cfg, log, nc, listeners, inh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	g.Subscriptions = subs
	js, err := jetstream.New(nc)
	if err != nil {
		closeListeners(g)
		return nil, fmt.Errorf("%s: jetstream: %w", cmd, err)
	}
	r := &gatewayRun{js: js, g: g, served: make(chan struct{})}
	ctx, r.cancel = context.WithCancel(ctx)
	r.grp, r.ctx = errgroup.WithContext(ctx)
	r.obs, r.metricsURL, r.http, err = startHTTPOn(r.ctx, cfg, log, r.grp, inh.httpListener())
	if err == nil {
		err = observeGateway(r.obs, g, nc, js, cfg)
	}
	if err != nil {
		closeListeners(g)
		r.cancel()
		r.grp.Wait()
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	r.grp.Go(func() error {
		defer close(r.served)
		return g.Serve(r.ctx)
	})
	select {
	case <-g.Ready():
		return r, nil
	case <-r.ctx.Done():
		err := r.grp.Wait()
		r.cancel()
		return nil, err
	}
}

// newWorker returns a worker group member with the configured delivery,
// stream, backlog, ack wait and logger.
func newWorker(cfg config, log *slog.Logger, js jetstream.JetStream, group string, subjects []string, h workers.Handler, concurrency int) *workers.Server {
	return &workers.Server{
		JetStream:   js,
		Delivery:    cfg.Delivery,
		Stream:      cfg.Stream,
		Group:       group,
		Subjects:    subjects,
		Handler:     h,
		Concurrency: concurrency,
		Backlog:     cfg.WorkerBacklog,
		AckWait:     cfg.AckWait,
		Log:         log,
	}
}

// runWorker is `udpgate worker NAME`.
func runWorker(ctx context.Context, cfg config, log *slog.Logger, name string) error {
	h, ok := builtin.Lookup(name)
	if !ok {
		return fmt.Errorf("worker: unknown worker %q (built-in: %s)", name, strings.Join(builtin.Names(), ", "))
	}
	subjects := cfg.WorkerSubjects
	if len(subjects) == 0 {
		for _, b := range builtinListeners {
			if b.worker == name {
				subjects = builtin.Subjects(b.worker, cfg.Prefix, b.port)
			}
		}
	}
	group := cfg.WorkerGroup
	if group == "" {
		group = name
	}
	nc, err := connectNATS(cfg, "udpgate worker "+name)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("worker: jetstream: %w", err)
	}
	w := newWorker(cfg, log, js, group, subjects, h, cfg.WorkerConc)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	grp, ctx := errgroup.WithContext(ctx)
	obs, _, err := startHTTP(ctx, cfg, log, grp)
	if err == nil {
		err = observeWorker(obs, w, nc)
	}
	if err != nil {
		cancel()
		grp.Wait()
		return fmt.Errorf("worker: %w", err)
	}
	log.Info("worker: serving", "worker", name, "group", group, "subjects", subjects)
	grp.Go(func() error { return w.Serve(ctx) })
	return grp.Wait()
}

// sendUsage is the synopsis of `udpgate send`.
const sendUsage = `usage: udpgate send [flags] URL [PAYLOAD]   (no PAYLOAD: read standard input)
  URL: udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY] or rpc://HOST:PORT/SERVICE/METHOD`

// send is `udpgate send`: requests to URL, resent on a backoff until a
// valid reply comes; the reply on stdout, how it went on stderr. With
// -count N it sends N requests one after the other and prints a line per
// reply and a summary, as ping does. Exit status 1 when a request got no
// reply (or an RPC error or CoAP error code), 2 for a usage error.
func send(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, sendUsage)
		fs.PrintDefaults()
	}
	method := fs.String("method", "get", "CoAP method: get, post, put, delete, fetch, patch or ipatch")
	format := fs.Int("content-format", -1, "CoAP Content-Format of the payload, e.g. 0 (text), 50 (JSON); -1 for none")
	wait := fs.Duration("wait", client.DefaultWait, "how long the first copy waits for a reply before the request is sent again")
	factor := fs.Float64("factor", client.DefaultFactor, "each further copy waits this many times longer (CoAP: always 2)")
	timeout := fs.Duration("timeout", client.DefaultTimeout, "give up on a request this long after its first copy")
	count := fs.Int("count", 1, "send this many requests, one after the other, and print latency and loss")
	verbose := fs.Bool("v", false, "say where the reply came from, how soon and after how many tries")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return errUsage
	}
	if fs.NArg() < 1 || fs.NArg() > 2 || *count < 1 || *format > 65535 || *wait <= 0 || *timeout <= 0 || *factor < 1 {
		fs.Usage()
		return errUsage
	}
	opts := client.Options{Wait: *wait, Factor: *factor, Timeout: *timeout, Method: *method}
	if *format >= 0 {
		cf := uint16(*format)
		opts.ContentFormat = &cf
	}
	target := fs.Arg(0)
	var payload []byte
	if fs.NArg() == 2 {
		payload = []byte(fs.Arg(1))
	} else if m := strings.ToLower(*method); !strings.HasPrefix(target, "coap:") || (m != "get" && m != "delete") {
		const limit = 1 << 20
		var err error
		if payload, err = io.ReadAll(io.LimitReader(os.Stdin, limit+1)); err != nil {
			return fmt.Errorf("send: read standard input: %w", err)
		}
		if len(payload) > limit {
			return fmt.Errorf("send: standard input is larger than %d bytes", limit)
		}
	}
	c, err := client.Dial(ctx, target, opts)
	if errors.Is(err, client.ErrInvalid) {
		return &exitError{2, fmt.Errorf("send: %w", err)}
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	defer c.Close()
	if *count == 1 {
		return sendOne(ctx, c, payload, *verbose, stdout, stderr)
	}
	return sendMany(ctx, c, target, payload, *count, stdout, stderr)
}

// sendOne prints the reply to one request.
func sendOne(ctx context.Context, c *client.Conn, payload []byte, verbose bool, stdout, stderr io.Writer) error {
	res, err := c.Do(ctx, payload)
	for _, r := range res.Rejected {
		fmt.Fprintln(stderr, r)
	}
	if err != nil {
		return &exitError{1, fmt.Errorf("send: %w", err)}
	}
	if verbose || res.Tries > 1 {
		after := ""
		if res.Tries > 0 { // 0 for CoAP: go-coap does not count its retransmissions
			after = fmt.Sprintf(" after %d tries", res.Tries)
			if res.Tries == 1 {
				after = " after 1 try"
			}
		}
		fmt.Fprintf(stderr, "reply from %s in %s%s\n", res.From, res.Latency.Round(time.Microsecond), after)
	}
	if verbose && res.Code != 0 {
		fmt.Fprintf(stderr, "coap: %s, content-format %d\n", client.CodeString(res.Code), res.ContentFormat)
	}
	if res.Status != rpcpb.Status_STATUS_OK {
		return &exitError{1, fmt.Errorf("rpc: %s: %s", res.Status, res.Error)}
	}
	body := res.Body
	if res.Response != nil {
		if body, err = protojson.Marshal(res.Response); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	stdout.Write(body)
	if len(body) == 0 || (body[len(body)-1] != '\n' && utf8.Valid(body)) {
		io.WriteString(stdout, "\n") // end a text reply's line; binary replies stay byte for byte
	}
	if res.Code != 0 && res.Code>>5 != 2 {
		return &exitError{1, fmt.Errorf("coap: %s", client.CodeString(res.Code))}
	}
	return nil
}

// sendMany sends count requests one after the other, a line for each
// reply, then the summary; an interrupt ends the run early, with the
// summary of the requests that were answered or timed out.
func sendMany(ctx context.Context, c *client.Conn, target string, payload []byte, count int, stdout, stderr io.Writer) error {
	var latencies []time.Duration
	sent := 0
	for seq := 1; seq <= count; seq++ {
		res, err := c.Do(ctx, payload)
		for _, r := range res.Rejected {
			fmt.Fprintf(stderr, "seq=%d: %s\n", seq, r)
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		if err != nil {
			fmt.Fprintf(stderr, "seq=%d: %v\n", seq, err)
			continue
		}
		latencies = append(latencies, res.Latency)
		var extra strings.Builder
		if res.Tries > 1 {
			fmt.Fprintf(&extra, " tries=%d", res.Tries)
		}
		if res.Code != 0 {
			fmt.Fprintf(&extra, " code=%d.%02d", res.Code>>5, res.Code&31)
		}
		if res.Status != rpcpb.Status_STATUS_OK {
			fmt.Fprintf(&extra, " status=%s", res.Status)
		}
		fmt.Fprintf(stdout, "%d bytes from %s: seq=%d time=%s ms%s\n", len(res.Body), res.From, seq, ms(res.Latency), extra.String())
	}
	st := client.Summarize(sent, latencies)
	fmt.Fprintf(stdout, "--- %s ---\n", target)
	fmt.Fprintf(stdout, "%d sent, %d received, %.4g%% loss\n", st.Sent, st.Received, st.Loss())
	if st.Received > 0 {
		fmt.Fprintf(stdout, "latency min/p50/p90/p99/max = %s/%s/%s/%s/%s ms\n",
			ms(st.Min), ms(st.P50), ms(st.P90), ms(st.P99), ms(st.Max))
	}
	if st.Received < st.Sent {
		return &exitError{1, fmt.Errorf("send: %d of %d requests got no reply", st.Sent-st.Received, st.Sent)}
	}
	return nil
}

// ms formats d in milliseconds with three decimals, as ping does.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
}

// runLambda is `udpgate lambda`: a worker group that invokes an AWS Lambda
// function for each request.
func runLambda(ctx context.Context, cfg config, log *slog.Logger) error {
	lc := cfg.Lambda
	var problems []string
	if lc.Function == "" {
		problems = append(problems, "UDPGATE_LAMBDA_FUNCTION: required by lambda (a function name, ARN or alias)")
	}
	if len(lc.Subjects) == 0 {
		problems = append(problems, "UDPGATE_LAMBDA_SUBJECTS: required by lambda (the subjects to serve, like "+schemas.InSubject(cfg.Prefix, 9000)+")")
	}
	if len(problems) > 0 {
		return &configError{problems}
	}
	client, err := lambdabridge.NewClient(ctx, lc.Endpoint)
	if err != nil {
		return err
	}
	group := lc.Group
	if group == "" {
		group = "lambda-" + schemas.EscapeToken(lc.Function)
	}
	nc, err := connectNATS(cfg, "udpgate lambda "+lc.Function)
	if err != nil {
		return fmt.Errorf("lambda: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("lambda: jetstream: %w", err)
	}
	b := &lambdabridge.Bridge{
		Client:         client,
		Function:       lc.Function,
		Shape:          lc.Event,
		BatchSize:      lc.BatchSize,
		BatchWindow:    lc.BatchWindow,
		MaxInvocations: lc.Concurrency,
		InvokeTimeout:  lc.Timeout,
		Log:            log,
	}
	defer b.Close()
	w := newWorker(cfg, log, js, group, lc.Subjects, b, b.Concurrency())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	grp, ctx := errgroup.WithContext(ctx)
	obs, _, err := startHTTP(ctx, cfg, log, grp)
	if err == nil {
		err = observeWorker(obs, w, nc)
	}
	if err == nil {
		err = observe.RegisterLambda(obs.Registry, b, lc.Function)
	}
	if err != nil {
		cancel()
		grp.Wait()
		return fmt.Errorf("lambda: %w", err)
	}
	log.Info("lambda: serving", "function", lc.Function, "event", lc.Event, "group", group, "subjects", lc.Subjects)
	grp.Go(func() error { return w.Serve(ctx) })
	return grp.Wait()
}

// inherited are the sockets a gateway took over from the process it
// replaces, by name: listeners by their UDPGATE_LISTENERS form, the HTTP
// listener as "http". A nil *inherited holds none.
type inherited struct {
	conns map[string]*net.UDPConn
	http  net.Listener
}

// udp returns the socket handed over for l, if any, and forgets it.
func (inh *inherited) udp(l listener) (*net.UDPConn, error) {
	if inh == nil {
		return nil, nil
	}
	c := inh.conns[l.String()]
	delete(inh.conns, l.String())
	return c, nil
}

// httpListener returns the HTTP listener handed over, if any.
func (inh *inherited) httpListener() net.Listener {
	if inh == nil {
		return nil
	}
	ln := inh.http
	inh.http = nil
	return ln
}

// closeUnused closes the sockets handed over that this process's
// configuration does not serve: the old process answers on them until it
// has drained.
func (inh *inherited) closeUnused() {
	if inh == nil {
		return
	}
	for _, c := range inh.conns {
		c.Close()
	}
	if inh.http != nil {
		inh.http.Close()
	}
}

// httpSocket names the HTTP listener in a hand-over.
const httpSocket = "http"

// takeOver takes the sockets of the gateway offering them on
// cfg.Handover, if one does; nil, nil if none does (or the setting is
// empty).
func takeOver(ctx context.Context, cfg config, log *slog.Logger) (*inherited, *handover.Taken, error) {
	if cfg.Handover == "" {
		return nil, nil, nil
	}
	taken, err := handover.Take(ctx, cfg.Handover)
	if errors.Is(err, handover.ErrNoOffer) {
		log.Debug("gateway: no running gateway offers its sockets", "path", cfg.Handover)
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w (UDPGATE_HANDOVER)", err)
	}
	inh := &inherited{conns: map[string]*net.UDPConn{}}
	for _, s := range taken.Sockets {
		var err error
		if s.Name == httpSocket {
			inh.http, err = net.FileListener(s.File)
		} else {
			var pc net.PacketConn
			if pc, err = net.FilePacketConn(s.File); err == nil {
				c, ok := pc.(*net.UDPConn)
				if !ok {
					pc.Close()
					err = fmt.Errorf("%s is not a UDP socket", s.Name)
				}
				inh.conns[s.Name] = c
			}
		}
		s.File.Close()
		if err != nil {
			inh.closeUnused()
			return nil, nil, fmt.Errorf("handover: socket %s: %w", s.Name, err)
		}
	}
	return inh, taken, nil
}

// offerSockets offers the gateway's sockets on cfg.Handover until a new
// process takes them; then it stops this one gracefully (it drains).
func offerSockets(run *gatewayRun, cfg config, log *slog.Logger) error {
	sockets := func() ([]handover.Socket, error) {
		var out []handover.Socket
		fail := func(err error) ([]handover.Socket, error) {
			for _, s := range out {
				s.File.Close()
			}
			return nil, err
		}
		for i, l := range run.g.Listeners {
			f, err := l.Conn.File()
			if err != nil {
				return fail(err)
			}
			out = append(out, handover.Socket{Name: cfg.Listeners[i].String(), File: f})
		}
		if tl, ok := run.http.(*net.TCPListener); ok {
			f, err := tl.File()
			if err != nil {
				return fail(err)
			}
			out = append(out, handover.Socket{Name: httpSocket, File: f})
		}
		return out, nil
	}
	err := handover.Offer(run.ctx, cfg.Handover, sockets, func() {
		log.Info("gateway: a new process took the sockets over: stopping", "path", cfg.Handover)
		run.cancel()
	})
	if err != nil {
		// Serving goes on; only the next hand-over is not possible.
		log.Error("gateway: cannot offer the sockets for a hand-over", "err", err)
	}
	return nil
}
