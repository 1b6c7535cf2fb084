package workers_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

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
