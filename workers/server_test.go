package workers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/workers"
)

func TestServeConfigErrors(t *testing.T) {
	e := newEnv(t)
	h := reply("x")
	tests := []struct {
		name string
		s    *workers.Server
		want string
	}{
		{"no connection", &workers.Server{Group: "g", Subjects: []string{subject}, Handler: h}, "workers: Server.NATS and Server.JetStream are nil"},
		{"bad delivery", &workers.Server{NATS: e.nc, Delivery: 7, Group: "g", Subjects: []string{subject}, Handler: h}, "workers: Server.Delivery 7 is neither Direct nor Durable"},
		{"no group", &workers.Server{NATS: e.nc, Subjects: []string{subject}, Handler: h}, "workers: Server.Group is empty"},
		{"no subjects", &workers.Server{NATS: e.nc, Group: "g", Handler: h}, "workers: Server.Subjects is empty"},
		{"no handler", &workers.Server{NATS: e.nc, Group: "g", Subjects: []string{subject}}, "workers: Server.Handler is nil"},
		{"no handler, durable", &workers.Server{JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}}, "workers: Server.Handler is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Serve(context.Background())
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Serve = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParseDelivery(t *testing.T) {
	for _, d := range deliveries {
		got, err := workers.ParseDelivery(d.String())
		if err != nil || got != d {
			t.Errorf("ParseDelivery(%q) = %v, %v; want %v", d.String(), got, err, d)
		}
	}
	if _, err := workers.ParseDelivery("Durable"); err == nil {
		t.Error(`ParseDelivery("Durable") = nil error, want one`)
	}
	var zero workers.Server
	if zero.Delivery != workers.Direct {
		t.Errorf("the zero Server's Delivery is %v, want direct", zero.Delivery)
	}
}

// TestServeConnectionClosed: a Server whose connection closes for good
// returns an error rather than waiting forever for requests.
func TestServeConnectionClosed(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			nc := e.conn(t)
			s := &workers.Server{NATS: nc, Delivery: d, Group: "g", Subjects: []string{subject}, Handler: reply("x")}
			done := make(chan error, 1)
			go func() { done <- s.Serve(context.Background()) }()
			waitReady(t, s)
			nc.Close()
			select {
			case err := <-done:
				if !errors.Is(err, nats.ErrConnectionClosed) {
					t.Errorf("Serve = %v, want ErrConnectionClosed", err)
				}
			case <-time.After(waitFor):
				t.Fatal("Serve did not return after its connection closed")
			}
		})
	}
}

func TestServeStreamNotFound(t *testing.T) {
	srv := natstest.RunServer(t)
	_, js := natstest.JetStream(t, srv)
	s := &workers.Server{JetStream: js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, Handler: reply("x")}
	err := s.Serve(context.Background())
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("Serve = %v, want ErrStreamNotFound", err)
	}
	const want = "workers: stream UDPGATE_IN not found: is the gateway running?"
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Serve = %q, want prefix %q", err, want)
	}
}

// TestServeDirectNeedsNoStream: a Direct group serves without JetStream's
// capture stream.
func TestServeDirectNeedsNoStream(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv)
	s := &workers.Server{NATS: nc, Group: "g", Subjects: []string{subject}, Handler: reply("pong")}
	start(t, s)
	got, err := nc.Request(subject, []byte("ping"), waitFor)
	if err != nil || string(got.Data) != "pong" {
		t.Fatalf("Request = %v, %v; want pong", got, err)
	}
}

func TestConcurrencyBound(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			const (
				limit    = 3
				requests = 12
			)
			var running, peak atomic.Int32
			release := make(chan struct{})
			s := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Concurrency: limit,
				Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
					n := running.Add(1)
					defer running.Add(-1)
					for {
						p := peak.Load()
						if n <= p || peak.CompareAndSwap(p, n) {
							break
						}
					}
					<-release
					_, err := w.Write(nil)
					return err
				}),
			}
			start(t, s)
			for i := range requests {
				e.send(t, fmt.Sprint(i), "")
			}
			poll(t, "handlers running", func() bool { return running.Load() == limit })
			for range requests {
				release <- struct{}{}
				e.next(t)
			}
			if p := peak.Load(); p != limit {
				t.Errorf("peak concurrency = %d, want %d", p, limit)
			}
		})
	}
}

// TestInProgress runs a handler for several AckWaits: it is not
// redelivered meanwhile.
func TestInProgress(t *testing.T) {
	e := newEnv(t)
	const ackWait = 300 * time.Millisecond
	var calls atomic.Int32
	s := &workers.Server{
		JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, AckWait: ackWait,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			calls.Add(1)
			if r.ID == "slow" {
				select { // the work the handler does
				case <-time.After(4 * ackWait):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			_, err := fmt.Fprintf(w, "%s %d", r.ID, r.Delivery)
			return err
		}),
	}
	serve(t, s)
	e.waitPulling(t, "g", 1)
	e.send(t, "slow", "")
	if got := string(e.next(t).Data); got != "slow 1" {
		t.Errorf("reply = %q, want %q", got, "slow 1")
	}
	if info := e.waitSettled(t, "g"); info.NumRedelivered != 0 || calls.Load() != 1 {
		t.Errorf("redelivered %d, handler called %d times; want 0, 1", info.NumRedelivered, calls.Load())
	}
}

// TestLogs checks that the Server logs through its Log field and nothing
// per request at Info level or above.
func TestLogs(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			logs := &countHandler{}
			s := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Log: slog.New(logs),
				Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
					if r.ID == "fail" {
						return errors.New("boom")
					}
					_, err := w.Write(nil)
					return err
				}),
			}
			stop := start(t, s)
			const n = 20
			for i := range n {
				e.send(t, fmt.Sprint(i), "")
			}
			e.send(t, "fail", "")
			for range n + 1 {
				e.next(t)
			}
			if err := stop(); err != nil {
				t.Fatalf("Serve = %v", err)
			}
			logs.mu.Lock()
			defer logs.mu.Unlock()
			if logs.info != 2 || logs.debug == 0 {
				t.Errorf("logged %d records at Info or above and %d at Debug; want 2 (start, stop) and some", logs.info, logs.debug)
			}
		})
	}
}

// countHandler is a slog.Handler that counts records by level.
type countHandler struct {
	mu          sync.Mutex // guards info and debug
	info, debug int
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }

func (h *countHandler) WithGroup(string) slog.Handler { return h }

func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Level >= slog.LevelInfo {
		h.info++
	} else {
		h.debug++
	}
	return nil
}
