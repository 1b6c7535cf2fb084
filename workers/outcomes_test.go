package workers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestOutcomes checks how each handler outcome becomes a reply (and, for
// a Durable group, an acknowledgement). A sentinel request follows each
// case; with Concurrency 1 a reply to the case arrives before the
// sentinel's.
func TestOutcomes(t *testing.T) {
	type reply struct{ status, body string }
	tests := []struct {
		name       string
		only       []workers.Delivery // the deliveries the case runs in; nil for both
		maxDeliver int
		handle     workers.HandlerFunc
		want       []reply // replies before the sentinel's
		term       bool
		stats      workers.Stats // without the sentinel
	}{
		{
			name: "body",
			handle: func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
				_, err := w.Write(append([]byte("re: "), r.Body...))
				return err
			},
			want:  []reply{{"", "re: ping"}},
			stats: workers.Stats{Handled: 1, Replied: 1},
		},
		{
			name: "empty write",
			handle: func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
				_, err := w.Write(nil)
				return err
			},
			want:  []reply{{"", ""}},
			stats: workers.Stats{Handled: 1, Replied: 1},
		},
		{
			name: "header only",
			handle: func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
				w.Header().Set(schemas.HeaderStatus, schemas.StatusError)
				return nil
			},
			want:  []reply{{schemas.StatusError, ""}},
			stats: workers.Stats{Handled: 1, Replied: 1},
		},
		{
			name:   "nothing written",
			handle: func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil },
			stats:  workers.Stats{Handled: 1},
		},
		{
			name: "error",
			handle: func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
				_, _ = w.Write([]byte("partial"))
				return errors.New("boom")
			},
			want:  []reply{{schemas.StatusError, ""}},
			term:  true,
			stats: workers.Stats{Handled: 1, Failed: 1},
		},
		{
			name: "panic",
			handle: func(context.Context, workers.ResponseWriter, *workers.Request) error {
				panic("boom")
			},
			want:  []reply{{schemas.StatusError, ""}},
			term:  true,
			stats: workers.Stats{Handled: 1, Failed: 1},
		},
		{
			// Nothing to redeliver: the client's retry is the redelivery.
			name: "retry",
			only: []workers.Delivery{workers.Direct},
			handle: func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
				_, _ = w.Write([]byte("partial"))
				return fmt.Errorf("db busy: %w", workers.ErrRetry)
			},
			stats: workers.Stats{Handled: 1, Retried: 1},
		},
		{
			name:       "retry on last delivery",
			only:       []workers.Delivery{workers.Durable},
			maxDeliver: 1,
			handle: func(context.Context, workers.ResponseWriter, *workers.Request) error {
				return fmt.Errorf("db busy: %w", workers.ErrRetry)
			},
			want:  []reply{{schemas.StatusError, ""}},
			term:  true,
			stats: workers.Stats{Handled: 1, Failed: 1},
		},
	}
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			for _, tt := range tests {
				if tt.only != nil && !slices.Contains(tt.only, d) {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					e := newEnv(t)
					terms, err := e.nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
					if err != nil {
						t.Fatal(err)
					}
					s := &workers.Server{
						NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Concurrency: 1, MaxDeliver: tt.maxDeliver,
						Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
							if r.ID == "sentinel" {
								_, err := w.Write(nil)
								return err
							}
							return tt.handle(ctx, w, r)
						}),
					}
					start(t, s)
					e.send(t, "r1", "ping")
					e.send(t, "sentinel", "")
					var got []reply
					for _, m := range e.until(t, "sentinel") {
						if id := replyID(m); id != "r1" {
							t.Errorf("reply to %q, want r1", id)
						}
						if id := m.Header.Get(schemas.HeaderID); id != "" {
							t.Errorf("reply has %s %q: a reply's subject names its exchange", schemas.HeaderID, id)
						}
						got = append(got, reply{m.Header.Get(schemas.HeaderStatus), string(m.Data)})
					}
					if fmt.Sprint(got) != fmt.Sprint(tt.want) {
						t.Errorf("replies = %q, want %q", got, tt.want)
					}
					if d == workers.Durable {
						info := e.waitSettled(t, "g")
						if info.NumRedelivered != 0 || info.Delivered.Consumer != 2 {
							t.Errorf("consumer delivered %d, redelivered %d; want 2, 0", info.Delivered.Consumer, info.NumRedelivered)
						}
						if tt.term {
							if _, err := terms.NextMsg(waitFor); err != nil {
								t.Errorf("no termination advisory: %v", err)
							}
						} else if m, err := terms.NextMsg(0); err == nil {
							t.Errorf("unexpected termination advisory %s", m.Data)
						}
					}
					want := tt.stats
					want.Handled++
					want.Replied++
					waitStats(t, s, want)
				})
			}
		})
	}
}

func TestRetry(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	s := &workers.Server{
		JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, AckWait: time.Minute,
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			calls.Add(1)
			if r.Delivery < 3 {
				return fmt.Errorf("not yet: %w", workers.ErrRetry)
			}
			_, err := fmt.Fprintf(w, "delivery %d", r.Delivery)
			return err
		}),
	}
	serve(t, s)
	e.waitPulling(t, "g", 1)
	e.send(t, "r1", "")
	// AckWait is a minute: a redelivery within the test comes from a nak.
	if got := string(e.next(t).Data); got != "delivery 3" {
		t.Errorf("reply = %q, want %q", got, "delivery 3")
	}
	e.waitSettled(t, "g")
	waitStats(t, s, workers.Stats{Handled: 3, Replied: 1, Retried: 2})
	if n := calls.Load(); n != 3 {
		t.Errorf("handler called %d times, want 3", n)
	}
}

func TestDeadline(t *testing.T) {
	tests := []struct {
		name     string
		deadline time.Duration // from when the request is sent
		handle   workers.HandlerFunc
		called   bool
		stats    workers.Stats // without the sentinel
	}{
		{
			name:     "passed before handling",
			deadline: -time.Millisecond,
			handle:   reply("late"),
			stats:    workers.Stats{Expired: 1},
		},
		{
			name:     "reply after deadline",
			deadline: time.Second, // in time to reach the handler even on a loaded machine
			handle: func(ctx context.Context, w workers.ResponseWriter, _ *workers.Request) error {
				<-ctx.Done()
				if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return fmt.Errorf("ctx.Err() = %v, want DeadlineExceeded", ctx.Err())
				}
				_, err := w.Write([]byte("late"))
				return err
			},
			called: true,
			stats:  workers.Stats{Handled: 1, Expired: 1},
		},
		{
			name:     "error after deadline",
			deadline: time.Second,
			handle: func(ctx context.Context, _ workers.ResponseWriter, _ *workers.Request) error {
				<-ctx.Done()
				return ctx.Err()
			},
			called: true,
			stats:  workers.Stats{Handled: 1, Expired: 1},
		},
		{
			name:     "in time",
			deadline: time.Minute,
			handle:   reply("on time"),
			called:   true,
			stats:    workers.Stats{Handled: 1, Replied: 1},
		},
	}
	for _, d := range deliveries {
		for _, tt := range tests {
			t.Run(d.String()+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				var called atomic.Bool
				s := &workers.Server{
					NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Concurrency: 1,
					Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
						if r.ID == "sentinel" {
							_, err := w.Write(nil)
							return err
						}
						called.Store(true)
						return tt.handle(ctx, w, r)
					}),
				}
				start(t, s)
				e.publish(t, e.request(subject, "r1", nil, time.Now().Add(tt.deadline)))
				e.send(t, "sentinel", "")
				replies := e.until(t, "sentinel")
				if tt.stats.Replied == 0 && len(replies) != 0 {
					t.Errorf("got reply %q, want none", replies[0].Data)
				}
				if tt.stats.Replied == 1 && len(replies) != 1 {
					t.Errorf("got %d replies, want 1", len(replies))
				}
				if called.Load() != tt.called {
					t.Errorf("handler called = %v, want %v", called.Load(), tt.called)
				}
				if d == workers.Durable {
					if info := e.waitSettled(t, "g"); info.NumRedelivered != 0 {
						t.Errorf("redelivered %d, want 0", info.NumRedelivered)
					}
				}
				want := tt.stats
				want.Handled++
				want.Replied++
				waitStats(t, s, want)
			})
		}
	}
}

func TestMalformedRequest(t *testing.T) {
	noReply := func(m *nats.Msg) {
		m.Header.Del(schemas.HeaderReply)
		m.Reply = ""
	}
	tests := []struct {
		name    string
		edit    func(m *nats.Msg)
		answer  bool // the handler writes a reply
		want    func(r *workers.Request) string
		replied bool
		term    bool          // Durable: the request is termed
		stats   workers.Stats // without the sentinel
	}{
		{
			name:   "no reply subject, answered",
			edit:   noReply,
			answer: true,
			term:   true,
			stats:  workers.Stats{Handled: 1, Failed: 1},
		},
		{
			name:  "no reply subject, observed",
			edit:  noReply,
			stats: workers.Stats{Handled: 1},
		},
		{
			// The reply subject names the exchange: ce-id is not needed.
			name:    "no id, answered",
			edit:    func(m *nats.Msg) { m.Header.Del(schemas.HeaderID) },
			answer:  true,
			replied: true,
			stats:   workers.Stats{Handled: 1, Replied: 1},
		},
		{
			name: "garbage headers",
			edit: func(m *nats.Msg) {
				h := m.Header
				h.Set(schemas.HeaderDeadline, "soon")
				h.Set(schemas.HeaderRemote, "nowhere")
				h.Set(schemas.HeaderLocal, "300.1.1.1:70000")
				h.Set(schemas.HeaderSource, "9000/raw")
				h.Set(schemas.HeaderTime, "yesterday")
			},
			answer: true,
			want: func(r *workers.Request) string {
				if !r.Deadline.IsZero() || r.Remote.IsValid() || r.Local.IsValid() || r.Node != "" ||
					r.Port != 0 || r.Protocol != "" || r.Listener != "" || r.Received.IsZero() != (r.Delivery == 0) {
					return fmt.Sprintf("fields not zero: %+v", r)
				}
				return ""
			},
			replied: true,
			stats:   workers.Stats{Handled: 1, Replied: 1},
		},
	}
	for _, d := range deliveries {
		for _, tt := range tests {
			t.Run(d.String()+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t)
				terms, err := e.nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
				if err != nil {
					t.Fatal(err)
				}
				problems := make(chan string, 1)
				s := &workers.Server{
					NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Concurrency: 1,
					Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
						if r.ID == "sentinel" {
							_, err := w.Write(nil)
							return err
						}
						if tt.want != nil {
							problems <- tt.want(r)
						}
						if tt.answer {
							_, err := w.Write([]byte("answer"))
							return err
						}
						return nil
					}),
				}
				start(t, s)
				m := e.request(subject, "r1", []byte("x"), time.Time{})
				tt.edit(m)
				e.publish(t, m)
				e.send(t, "sentinel", "")
				got := e.until(t, "sentinel")
				if tt.replied && len(got) == 0 && d == workers.Direct {
					// A direct instance that finds itself behind (a
					// loaded machine) serves its backlog newest first:
					// the sentinel may be answered before r1.
					got = append(got, e.next(t))
				}
				if (len(got) > 0) != tt.replied || tt.replied && replyID(got[0]) != "r1" {
					t.Errorf("%d replies, want reply %v", len(got), tt.replied)
				}
				if tt.want != nil {
					if p := <-problems; p != "" {
						t.Error(p)
					}
				}
				if d == workers.Durable {
					e.waitSettled(t, "g")
					if tt.term {
						if _, err := terms.NextMsg(waitFor); err != nil {
							t.Errorf("no termination advisory: %v", err)
						}
					}
				}
				want := tt.stats
				want.Handled++
				want.Replied++
				waitStats(t, s, want)
			})
		}
	}
}

// TestRequestFields checks the Request a handler sees for a well-formed
// request, live or imported (with ce-time).
func TestRequestFields(t *testing.T) {
	imported := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	for _, d := range deliveries {
		for _, live := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/live=%v", d, live), func(t *testing.T) {
				e := newEnv(t)
				got := make(chan *workers.Request, 1)
				s := &workers.Server{
					NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject},
					Handler: workers.HandlerFunc(func(_ context.Context, _ workers.ResponseWriter, r *workers.Request) error {
						got <- r
						return nil
					}),
				}
				start(t, s)
				deadline := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli())
				m := e.request(subject, "r1", []byte("body"), deadline)
				if !live {
					m.Header.Set(schemas.HeaderTime, imported.Format(time.RFC3339Nano))
				}
				before := time.Now()
				e.publish(t, m)
				after := time.Now()
				var r *workers.Request
				select {
				case r = <-got:
				case <-time.After(waitFor):
					t.Fatal("handler not called")
				}
				var received bool
				var delivery uint64
				switch {
				case !live:
					received = r.Received.Equal(imported)
				case d == workers.Direct:
					received = r.Received.IsZero() // nothing says when a live request was read
				default:
					// When the stream stored it.
					received = !r.Received.Before(before.Add(-time.Second)) && !r.Received.After(after.Add(time.Second))
				}
				if d == workers.Durable {
					delivery = 1
				}
				checks := []struct {
					name      string
					got, want any
				}{
					{"ID", r.ID, "r1"},
					{"Subject", r.Subject, subject},
					{"Reply", r.Reply, e.reply + ".r1"},
					{"Node", r.Node, node},
					{"Listener", r.Listener, "9000/raw"},
					{"Protocol", r.Protocol, schemas.ProtocolRaw},
					{"Port", r.Port, uint16(9000)},
					{"Remote", r.Remote.String(), "192.0.2.7:40000"},
					{"Local", r.Local.String(), "127.0.0.1:9000"},
					{"Received", received, true},
					{"Deadline", r.Deadline.Equal(deadline), true},
					{"Body", string(r.Body), "body"},
					{"Header", r.Header.Get(schemas.HeaderType), schemas.TypeRaw},
					{"Delivery", r.Delivery, delivery},
					{"CoAP", r.CoAP == nil, true},
					{"RPC", r.RPC == nil, true},
				}
				for _, c := range checks {
					if c.got != c.want {
						t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
					}
				}
			})
		}
	}
}

// TestHandlerStateReused runs requests one after another on one handler
// goroutine, which reuses its response (and, Durable, its keepalive):
// nothing of a reply leaks into the next, and a slow request after a fast
// one still gets its keepalives.
func TestHandlerStateReused(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			const ackWait = 300 * time.Millisecond
			s := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, AckWait: ackWait, Concurrency: 1,
				Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
					switch r.ID {
					case "slow-1", "slow-2":
						select { // outlive AckWait
						case <-time.After(3 * ackWait):
						case <-ctx.Done():
							return ctx.Err()
						}
						w.Header().Set("x-slow", "yes")
					case "silent":
						return nil
					}
					_, err := fmt.Fprintf(w, "%s %d", r.ID, r.Delivery)
					return err
				}),
			}
			start(t, s)
			delivery := 0
			if d == workers.Durable {
				delivery = 1
			}
			// One request at a time: a request fetched while the handler is
			// busy gets no keepalive and would be redelivered after AckWait.
			steps := []struct{ id, slow string }{
				{"slow-1", "yes"}, {"fast", ""}, {"silent", ""}, {"slow-2", "yes"}, {"fast-2", ""},
			}
			for i, want := range steps {
				e.send(t, want.id, "")
				if want.id == "silent" {
					// Nothing of the previous reply is sent for it.
					waitStats(t, s, workers.Stats{Handled: uint64(i + 1), Replied: uint64(i)})
					continue
				}
				m := e.next(t)
				body := fmt.Sprintf("%s %d", want.id, delivery)
				if got := replyID(m); got != want.id || string(m.Data) != body || m.Header.Get("x-slow") != want.slow {
					t.Errorf("reply to %q %q x-slow %q; want %q %q %q", got, m.Data, m.Header.Get("x-slow"), want.id, body, want.slow)
				}
				if n := len(m.Header); n != len(want.slow)/3 {
					t.Errorf("reply %s has headers %v", want.id, m.Header)
				}
			}
			if d == workers.Durable {
				if info := e.waitSettled(t, "g"); info.NumRedelivered != 0 {
					t.Errorf("redelivered %d, want 0", info.NumRedelivered)
				}
			}
			waitStats(t, s, workers.Stats{Handled: 5, Replied: 4})
		})
	}
}
