package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
)

// ErrStopped is what ListenAndServe returns after a signal stopped it
// gracefully, as http.ListenAndServe returns http.ErrServerClosed.
var ErrStopped = errors.New("workers: stopped by a signal")

// ListenAndServe is the one-call start of a worker: it serves the requests
// on subject with handler as an instance of group, in Direct delivery (a
// core NATS queue subscription; the reply is the NATS reply idiom),
// connected to the NATS server(s) in UDPGATE_NATS_URL, or
// nats://127.0.0.1:4222 (where `udpgate run` listens) if that is not set.
// It stops gracefully on SIGINT or SIGTERM and then returns ErrStopped;
// otherwise it returns why it could not serve. For more (several subjects,
// Durable delivery, concurrency), set a Server's fields and call its
// ListenAndServe.
func ListenAndServe(subject, group string, handler Handler) error {
	s := &Server{Group: group, Subjects: []string{subject}, Handler: handler}
	return s.ListenAndServe()
}

// ListenAndServe connects to the NATS server(s) in UDPGATE_NATS_URL (or
// nats://127.0.0.1:4222) unless s.NATS or s.JetStream is set, logs to
// standard error unless s.Log is set, and serves until SIGINT or SIGTERM,
// then stops gracefully and returns ErrStopped. It returns any other error
// at once.
func (s *Server) ListenAndServe() error {
	if s.Log == nil {
		s.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if s.NATS == nil && s.JetStream == nil {
		url := os.Getenv("UDPGATE_NATS_URL")
		if url == "" {
			url = "nats://127.0.0.1:4222"
		}
		log := s.Log
		nc, err := nats.Connect(url, nats.Name("udpgate worker "+s.Group), nats.MaxReconnects(-1),
			// NATS's own reports go to the log, not to standard error:
			// a slow consumer (requests dropped, see Stats.Dropped) is
			// reported once each time a subscription falls behind.
			nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
				if sub != nil {
					log.Warn("workers: nats", "subject", sub.Subject, "err", err)
					return
				}
				log.Warn("workers: nats", "err", err)
			}),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil { // nil: closed by ListenAndServe
					log.Warn("workers: disconnected from nats", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("workers: reconnected to nats", "url", nc.ConnectedUrlRedacted())
			}))
		if err != nil {
			return fmt.Errorf("workers: connect to %s: %w", strings.Join(redact(url), ","), err)
		}
		defer nc.Drain()
		s.NATS = nc
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := s.Serve(ctx); err != nil {
		return err
	}
	return ErrStopped
}

// redact drops the user information of each comma-separated URL, for an
// error message.
func redact(urls string) []string {
	var out []string
	for _, u := range strings.Split(urls, ",") {
		if at := strings.LastIndexByte(u, '@'); at >= 0 {
			scheme, _, _ := strings.Cut(u, "://")
			u = scheme + "://" + u[at+1:]
		}
		out = append(out, u)
	}
	return out
}
