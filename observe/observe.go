// Package observe serves a udpgate process's metrics, liveness and
// readiness over HTTP: /metrics in the Prometheus text format, /healthz
// (the process is alive) and /readyz (every readiness check passes; if not,
// 503 and the first failing check's reason in the body).
//
// The metrics of the gateway, the workers and the Lambda bridge are
// collectors that read their atomic counters at scrape time, so the
// datagram path makes no Prometheus calls; only the latency histograms are
// observed per event, through the optional Latency and HandlerLatency hooks
// of gateway.Gateway and workers.Server. docs/metrics.md lists every metric.
package observe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CheckTimeout bounds one run of the readiness checks.
const CheckTimeout = 2 * time.Second

// Check is one readiness condition: Func returns nil when it holds, or an
// error that says why not.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// Server serves /metrics, /healthz and /readyz. Set Registry, add checks
// with AddCheck (also while serving), then call Serve. Its methods are safe
// for concurrent use.
type Server struct {
	// Registry holds the metrics served on /metrics. Required.
	Registry *prometheus.Registry
	// Log receives errors of the HTTP server. Nil discards.
	Log *slog.Logger

	mu     sync.Mutex // guards checks and status
	checks []Check
	status func(ctx context.Context) any

	muxOnce sync.Once
	mux     *http.ServeMux // the endpoints and those added by Handle
}

// SetStatus sets what GET /v1/status answers, as JSON: a gateway's
// gateway.Status. Without it, /v1/status is 404.
func (s *Server) SetStatus(f func(ctx context.Context) any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = f
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	f := s.status
	s.mu.Unlock()
	if f == nil {
		http.Error(w, "no status: this process is not a gateway", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), CheckTimeout)
	defer cancel()
	b, err := json.MarshalIndent(f(ctx), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// AddCheck adds a readiness check; /readyz runs them in the order added.
func (s *Server) AddCheck(name string, f func(ctx context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, Check{name, f})
}

// Handler returns the handler of the endpoints, and of those added with
// Handle (also later).
func (s *Server) Handler() http.Handler {
	s.muxOnce.Do(func() {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "ok")
		})
		mux.HandleFunc("GET /readyz", s.readyz)
		mux.HandleFunc("GET /v1/status", s.serveStatus)
		s.mux = mux
	})
	return s.mux
}

// Handle serves pattern (http.ServeMux's patterns) with h beside the
// endpoints, also while Serve runs (a gateway's leased listeners: the
// bridge package).
func (s *Server) Handle(pattern string, h http.Handler) {
	s.Handler()
	s.mux.Handle(pattern, h)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.Ready(r.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ready")
}

// Ready runs the checks in order and returns the first failure, named by
// its check.
func (s *Server) Ready(ctx context.Context) error {
	s.mu.Lock()
	checks := append([]Check(nil), s.checks...)
	s.mu.Unlock()
	if len(checks) == 0 {
		return errors.New("starting")
	}
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	for _, c := range checks {
		if err := c.Func(ctx); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	return nil
}

// Serve serves HTTP on ln until ctx is cancelled, then shuts the server
// down and returns nil. It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	})
	defer stop()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("observe: serve %s: %w", ln.Addr(), err)
}

// Listen binds addr for Serve. A ":0" port picks a free one; the
// listener's Addr says which.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("observe: listen %s: %w", addr, err)
	}
	return ln, nil
}

// URL returns the http:// base URL of ln, with a loopback host for a
// wildcard bind.
func URL(ln net.Listener) string {
	a := ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("http://%s:%d", host, a.Port)
}
