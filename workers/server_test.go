package workers_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
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

func TestServeCreatesConsumer(t *testing.T) {
	tests := []struct {
		name string
		s    *workers.Server
		want jetstream.ConsumerConfig
	}{
		{
			name: "defaults",
			s:    &workers.Server{Subjects: []string{subject}},
			want: jetstream.ConsumerConfig{AckWait: 2 * time.Second, MaxDeliver: 5, MaxAckPending: 1024},
		},
		{
			name: "configured",
			s: &workers.Server{
				Subjects:   []string{subject, schemas.InSubject(prefix, 9001)},
				AckWait:    time.Second,
				MaxDeliver: 3, MaxAckPending: 10,
			},
			want: jetstream.ConsumerConfig{AckWait: time.Second, MaxDeliver: 3, MaxAckPending: 10},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			s := tt.s
			s.JetStream, s.Delivery, s.Group, s.Handler = e.js, workers.Durable, "g", reply("x")
			serve(t, s)
			e.waitPulling(t, "g", 1)
			got := e.consumerInfo(t, "g").Config
			if got.Durable != "g" || got.AckPolicy != jetstream.AckExplicitPolicy ||
				got.DeliverPolicy != jetstream.DeliverNewPolicy {
				t.Errorf("consumer = durable %q, ack %v, deliver %v; want g, explicit, new",
					got.Durable, got.AckPolicy, got.DeliverPolicy)
			}
			if got.AckWait != tt.want.AckWait || got.MaxDeliver != tt.want.MaxDeliver ||
				got.MaxAckPending != tt.want.MaxAckPending {
				t.Errorf("consumer = AckWait %v, MaxDeliver %d, MaxAckPending %d; want %v, %d, %d",
					got.AckWait, got.MaxDeliver, got.MaxAckPending,
					tt.want.AckWait, tt.want.MaxDeliver, tt.want.MaxAckPending)
			}
			filter := append([]string{got.FilterSubject}, got.FilterSubjects...)
			if got.FilterSubject == "" {
				filter = got.FilterSubjects
			}
			if fmt.Sprint(filter) != fmt.Sprint(s.Subjects) {
				t.Errorf("consumer filter = %q, want %q", filter, s.Subjects)
			}
		})
	}
}

func TestServeExistingConsumer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	other := schemas.InSubject(prefix, 9001)
	_, err := e.js.CreateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable:       "g",
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       7 * time.Second,
	})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}

	t.Run("same subjects used as is", func(t *testing.T) {
		s := &workers.Server{JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, Handler: reply("x"), AckWait: time.Second}
		serve(t, s)
		e.waitPulling(t, "g", 1)
		if got := e.consumerInfo(t, "g").Config.AckWait; got != 7*time.Second {
			t.Errorf("AckWait = %v, want the existing 7s", got)
		}
	})
	t.Run("other subjects", func(t *testing.T) {
		s := &workers.Server{JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject, other}, Handler: reply("x")}
		err := s.Serve(ctx)
		if err == nil {
			t.Fatal("Serve = nil, want an error")
		}
		for _, want := range []string{"workers: ", "consumer g", "stream UDPGATE_IN", `["udpgate.in.9000"]`, `["udpgate.in.9000" "udpgate.in.9001"]`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Serve = %q, want it to contain %q", err, want)
			}
		}
	})
}

// TestServeConcurrentStart starts several instances of several groups at
// once (Durable: against no consumer, and every one must bind). Then the
// instances of a group share the requests (each is handled once in the
// group, by any instance), and each group sees every request.
func TestServeConcurrentStart(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) { testConcurrentStart(t, d) })
	}
}

func testConcurrentStart(t *testing.T, d workers.Delivery) {
	e := newEnv(t)
	const (
		groups    = 3
		instances = 3
		requests  = 60
	)
	type key struct {
		group int
		id    string
	}
	var mu sync.Mutex // guards seen and byInstance
	seen := map[key]int{}
	byInstance := map[[2]int]int{}
	all := make(chan struct{}, groups*requests)

	begin := make(chan struct{})
	var started sync.WaitGroup
	var servers []*workers.Server
	for g := range groups {
		for i := range instances {
			s := &workers.Server{
				NATS:        e.conn(t),
				Delivery:    d,
				Group:       fmt.Sprintf("g%d", g),
				Subjects:    []string{subject},
				Concurrency: 1,
				// Different configurations: the instances that lose the
				// race to create the consumer use the winner's.
				AckWait: time.Duration(i+1) * time.Second,
				Handler: workers.HandlerFunc(func(_ context.Context, _ workers.ResponseWriter, r *workers.Request) error {
					mu.Lock()
					defer mu.Unlock()
					seen[key{g, r.ID}]++
					byInstance[[2]int{g, i}]++
					all <- struct{}{}
					return nil
				}),
			}
			servers = append(servers, s)
			started.Go(func() {
				<-begin
				serve(t, s)
			})
		}
	}
	close(begin)
	started.Wait()
	for _, s := range servers {
		waitReady(t, s)
	}
	if d == workers.Durable {
		for g := range groups {
			e.waitPulling(t, fmt.Sprintf("g%d", g), instances)
		}
	}
	for i := range requests {
		e.send(t, fmt.Sprint(i), "")
	}
	for range groups * requests {
		select {
		case <-all:
		case <-time.After(waitFor):
			t.Fatal("requests not all handled")
		}
	}
	if d == workers.Durable {
		for g := range groups {
			e.waitSettled(t, fmt.Sprintf("g%d", g))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for g := range groups {
		for i := range requests {
			if n := seen[key{g, fmt.Sprint(i)}]; n != 1 {
				t.Errorf("group %d handled request %d %d times, want 1", g, i, n)
			}
		}
		for i := range instances {
			if byInstance[[2]int{g, i}] == 0 {
				t.Errorf("instance %d of group %d handled nothing: the group does not share work", i, g)
			}
		}
	}
}

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
			deadline: 100 * time.Millisecond,
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
			deadline: 100 * time.Millisecond,
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

// TestShutdownNaks stops an instance while its handler runs: the request
// goes to the next instance at once, long before AckWait.
func TestShutdownNaks(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{})
	first := &workers.Server{
		JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, AckWait: time.Minute,
		Handler: workers.HandlerFunc(func(ctx context.Context, _ workers.ResponseWriter, _ *workers.Request) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}),
	}
	stop := serve(t, first)
	e.waitPulling(t, "g", 1)
	e.send(t, "r1", "")
	<-started
	if err := stop(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
	if got, want := first.Stats(), (workers.Stats{Handled: 1, Retried: 1}); got != want {
		t.Errorf("first Stats = %+v, want %+v", got, want) // final: Serve has returned
	}

	second := &workers.Server{
		JetStream: e.newJS(t), Delivery: workers.Durable, Group: "g", Subjects: []string{subject},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := fmt.Fprintf(w, "delivery %d", r.Delivery)
			return err
		}),
	}
	serve(t, second)
	if got := string(e.next(t).Data); got != "delivery 2" {
		t.Errorf("reply = %q, want %q", got, "delivery 2")
	}
}

// TestShutdownNaksFetched stops an instance whose handlers are busy while
// more requests wait: it has fetched only the requests its handlers run,
// which are nak'd, and the next instance takes every request at once, none
// left to AckWait.
func TestShutdownNaksFetched(t *testing.T) {
	e := newEnv(t)
	started := make(chan struct{}, 1)
	first := &workers.Server{
		JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, AckWait: time.Minute, Concurrency: 2,
		Handler: workers.HandlerFunc(func(ctx context.Context, _ workers.ResponseWriter, _ *workers.Request) error {
			started <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}),
	}
	stop := serve(t, first)
	e.waitPulling(t, "g", 1)
	const n = 8
	for i := range n {
		e.send(t, fmt.Sprint(i), "")
	}
	<-started
	<-started
	poll(t, "requests fetched", func() bool {
		// Two handlers run; the other requests wait in the stream.
		info := e.consumerInfo(t, "g")
		return info.NumAckPending == 2 && info.NumPending == n-2
	})
	if err := stop(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
	if got, want := first.Stats(), (workers.Stats{Handled: 2, Retried: 2}); got != want {
		t.Errorf("first Stats = %+v, want %+v", got, want)
	}
	second := &workers.Server{JetStream: e.newJS(t), Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, Handler: reply("ok")}
	serve(t, second)
	for range n {
		e.next(t)
	}
	waitStats(t, second, workers.Stats{Handled: n, Replied: n})
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
				if got := e.until(t, "sentinel"); (len(got) > 0) != tt.replied {
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

// TestServeConsumerDeleted: Serve returns an error when the consumer goes
// away under it, whether it is waiting for requests or its handlers are
// all busy, with no fetch outstanding.
func TestServeConsumerDeleted(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(fmt.Sprintf("busy=%v", busy), func(t *testing.T) {
			e := newEnv(t)
			started := make(chan struct{})
			release := make(chan struct{})
			s := &workers.Server{
				JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, Concurrency: 1,
				Handler: workers.HandlerFunc(func(context.Context, workers.ResponseWriter, *workers.Request) error {
					close(started)
					<-release
					return nil
				}),
			}
			done := make(chan error, 1)
			go func() { done <- s.Serve(context.Background()) }()
			e.waitPulling(t, "g", 1)
			if busy {
				e.send(t, "r1", "")
				<-started
				poll(t, "no fetch outstanding", func() bool { return e.consumerInfo(t, "g").NumWaiting == 0 })
			}
			if err := e.js.DeleteConsumer(context.Background(), schemas.StreamIn, "g"); err != nil {
				t.Fatalf("delete consumer: %v", err)
			}
			close(release)
			select {
			case err := <-done:
				if err == nil || !strings.HasPrefix(err.Error(), "workers: consume g on stream UDPGATE_IN: ") {
					t.Errorf("Serve = %v, want a consume error", err)
				}
			case <-time.After(waitFor):
				t.Fatal("Serve did not return after the consumer was deleted")
			}
		})
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
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countHandler) WithGroup(string) slog.Handler            { return h }

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
