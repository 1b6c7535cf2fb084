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
	"time"

	"github.com/nats-io/nats.go"
)

// ErrStopped is what ListenAndServe returns after a signal stopped it
// gracefully, in a program that handles that signal itself too (otherwise
// the signal ends the process; see ListenAndServe).
var ErrStopped = errors.New("workers: stopped by a signal")

// ListenAndServe is the one-call start of a worker: it serves the requests
// on subject with handler as an instance of group, in Direct delivery (a
// core NATS queue subscription; the reply is the NATS reply idiom),
// connected to the NATS server(s) in UDPGATE_NATS_URL, or
// nats://127.0.0.1:4222 (where `udpgate run` listens) if that is not set.
// Like http.ListenAndServe it returns only why it could not serve: on
// SIGINT or SIGTERM it stops gracefully (see Serve), closes its
// connection, and then lets the signal end the process, as it ends a
// program that does not handle it (so a supervisor sees a clean stop). A
// program that handles the signal too gets ErrStopped instead. For more
// (several subjects, Durable delivery, concurrency), set a Server's fields
// and call its ListenAndServe.
func ListenAndServe(subject, group string, handler Handler) error {
	s := &Server{Group: group, Subjects: []string{subject}, Handler: handler}
	return s.ListenAndServe()
}

// ListenAndServe connects to the NATS server(s) in UDPGATE_NATS_URL (or
// nats://127.0.0.1:4222) unless s.NATS or s.JetStream is set, logs to
// standard error unless s.Log is set, and serves until SIGINT or SIGTERM,
// which end it as they end the package's ListenAndServe. It returns any
// other error at once.
func (s *Server) ListenAndServe() error {
	if s.Log == nil {
		s.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	var own *nats.Conn // the connection ListenAndServe made, if it did
	closed := make(chan struct{})
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
			nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("workers: reconnected to nats", "url", nc.ConnectedUrlRedacted())
			}))
		if err != nil {
			return fmt.Errorf("workers: connect to %s: %w", strings.Join(redact(url), ","), err)
		}
		defer nc.Close()
		s.NATS = nc
		own = nc
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sig os.Signal // the signal that stopped Serve; read after Serve returns
	go func() {
		select {
		case sig = <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := s.Serve(ctx); err != nil {
		return err
	}
	cancel()
	if own != nil {
		// Flush the last replies before the process ends.
		if err := own.Drain(); err == nil {
			<-closed // Drain closes the connection, at the latest after its timeout
		}
	}
	// Without this function's registration, a process that does not
	// handle the signal itself is ended by it, as it would have been.
	signal.Stop(sigs)
	if p, err := os.FindProcess(os.Getpid()); err == nil && sig != nil {
		if p.Signal(sig) == nil {
			// The signal ends the process as it arrives, unless the
			// program handles it too: then it must reach the program's
			// handler before ListenAndServe returns, and the program
			// perhaps stops handling it.
			time.Sleep(signalGrace)
		}
	}
	return ErrStopped
}

// signalGrace is how long ListenAndServe waits for the signal it raised
// again to end the process, or to reach the program's own handler.
const signalGrace = 200 * time.Millisecond

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
