package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/workers"
)

// StartHTTP returns the process's metrics and health server, serving on
// cfg.HTTPListen in grp until ctx ends, and its base URL; an empty
// UDPGATE_HTTP_LISTEN serves nothing (the URL is empty) and the server only
// collects.
func StartHTTP(ctx context.Context, cfg config.Config, log *slog.Logger, grp *errgroup.Group) (*observe.Server, string, error) {
	srv, u, _, err := StartHTTPOn(ctx, cfg, log, grp, nil)
	return srv, u, err
}

// StartHTTPOn is StartHTTP on ln if not nil (a listener handed over by
// another process); it returns the listener it serves.
func StartHTTPOn(ctx context.Context, cfg config.Config, log *slog.Logger, grp *errgroup.Group, ln net.Listener) (*observe.Server, string, net.Listener, error) {
	srv := &observe.Server{Registry: observe.NewRegistry(), Log: log}
	if err := observe.RegisterBuild(srv.Registry); err != nil {
		return nil, "", nil, fmt.Errorf("metrics: %w", err)
	}
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

// ObserveGateway registers a gateway's metrics and readiness checks; call
// it before g.Serve.
func ObserveGateway(obs *observe.Server, g *gateway.Gateway, nc *nats.Conn, js jetstream.JetStream, cfg config.Config) error {
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

// ObserveWorker registers a worker process's metrics and readiness checks.
func ObserveWorker(obs *observe.Server, w *workers.Server, nc *nats.Conn) error {
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

// NewWorker returns a worker group member with the configured delivery,
// stream, backlog, ack wait and logger.
func NewWorker(cfg config.Config, log *slog.Logger, js jetstream.JetStream, group string, subjects []string, h workers.Handler, concurrency int) *workers.Server {
	return &workers.Server{
		JetStream:   js,
		Delivery:    cfg.Delivery,
		Stream:      cfg.Stream,
		Prefix:      cfg.Prefix,
		Group:       group,
		Subjects:    subjects,
		Handler:     h,
		Concurrency: concurrency,
		Backlog:     cfg.WorkerBacklog,
		AckWait:     cfg.AckWait,
		Log:         log,
	}
}

// ServeWorker serves the worker group member w of a worker process, with
// the process's metrics and health endpoint and its tracing
// (StartTracing: w's spans go to the global provider), until ctx ends or
// a part fails; then it exports the spans not exported yet. register, if
// not nil, registers more metrics of the process.
func ServeWorker(ctx context.Context, cfg config.Config, log *slog.Logger, nc *nats.Conn, w *workers.Server, register func(*observe.Server) error) error {
	tr, err := StartTracing(ctx, "udpgate-worker", log)
	if err != nil {
		return err
	}
	defer func() {
		if err := tr.Shutdown(); err != nil {
			log.Warn("tracing: stopping", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	grp, ctx := errgroup.WithContext(ctx)
	obs, _, err := StartHTTP(ctx, cfg, log, grp)
	if err == nil {
		err = ObserveWorker(obs, w, nc)
	}
	if err == nil && register != nil {
		err = register(obs)
	}
	if err != nil {
		cancel()
		grp.Wait()
		return err
	}
	grp.Go(func() error { return w.Serve(ctx) })
	return grp.Wait()
}
