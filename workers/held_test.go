package workers_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/udpgate/udpgate/workers"
)

// TestBusyInstanceHoldsNoRequests publishes more requests at once than an
// instance has handlers, each handler running three AckWaits per request:
// each request is handled exactly once, on its first delivery. An instance
// that fetched requests its handlers could not start would hold them
// without keepalives, and JetStream would redeliver them while they wait.
func TestBusyInstanceHoldsNoRequests(t *testing.T) {
	for _, concurrency := range []int{1, 3} {
		t.Run(fmt.Sprintf("concurrency=%d", concurrency), func(t *testing.T) {
			busyInstance(t, concurrency, 3*concurrency+1)
		})
	}
}

func busyInstance(t *testing.T, concurrency, requests int) {
	e := newEnv(t)
	const ackWait = 300 * time.Millisecond
	var (
		mu       sync.Mutex // guards calls and delivery
		calls    = map[string]int{}
		delivery = map[string]uint64{} // the highest delivery seen, by id
	)
	s := &workers.Server{
		JetStream: e.js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject},
		Concurrency: concurrency, AckWait: ackWait,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			mu.Lock()
			calls[r.ID]++
			delivery[r.ID] = max(delivery[r.ID], r.Delivery)
			mu.Unlock()
			select { // the work the handler does
			case <-time.After(3 * ackWait):
			case <-ctx.Done():
				return ctx.Err()
			}
			_, err := w.Write([]byte(r.ID))
			return err
		}),
	}
	serve(t, s)
	e.waitPulling(t, "g", 1)
	deadline := time.Now().Add(time.Minute)
	for i := range requests {
		e.publish(t, e.request(subject, fmt.Sprint(i), nil, deadline))
	}
	replies := map[string]int{}
	for range requests {
		replies[replyID(e.next(t))]++
	}
	info := e.waitSettled(t, "g")
	// The counters are updated just after the acks.
	poll(t, "requests counted", func() bool { return s.Stats().Replied >= uint64(requests) })

	mu.Lock()
	defer mu.Unlock()
	for i := range requests {
		id := fmt.Sprint(i)
		if calls[id] != 1 || delivery[id] != 1 || replies[id] != 1 {
			t.Errorf("request %s: handled %d times, delivery %d, %d replies; want 1, 1, 1",
				id, calls[id], delivery[id], replies[id])
		}
	}
	if info.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d requests, want 0", info.NumRedelivered)
	}
	n := uint64(requests)
	if got, want := s.Stats(), (workers.Stats{Handled: n, Replied: n}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

// TestQueuedRequestExpires publishes a request while the one handler is
// busy, and lets its deadline pass before the handler is free: it is
// skipped as expired without running the handler (Durable: acked; Direct:
// it waited in the backlog).
func TestQueuedRequestExpires(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) { queuedRequestExpires(t, d) })
	}
}

func queuedRequestExpires(t *testing.T, d workers.Delivery) {
	e := newEnv(t)
	started := make(chan struct{})
	release := make(chan struct{})
	var (
		mu     sync.Mutex // guards called
		called []string
	)
	s := &workers.Server{
		NATS: e.nc, Delivery: d, Group: "g", Subjects: []string{subject}, Concurrency: 1,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			mu.Lock()
			called = append(called, r.ID)
			mu.Unlock()
			if r.ID == "busy" {
				close(started)
				<-release
			}
			_, err := w.Write([]byte(r.ID))
			return err
		}),
	}
	start(t, s)
	e.send(t, "busy", "")
	<-started
	deadline := time.Now().Add(200 * time.Millisecond)
	e.publish(t, e.request(subject, "late", nil, deadline))
	<-time.After(time.Until(deadline)) // the deadline passes while the handler is busy
	close(release)
	e.send(t, "sentinel", "")
	for _, m := range e.until(t, "sentinel") {
		if id := replyID(m); id != "busy" {
			t.Errorf("reply to %q, want none but to busy and sentinel", id)
		}
	}
	if d == workers.Durable {
		if info := e.waitSettled(t, "g"); info.NumRedelivered != 0 {
			t.Errorf("redelivered %d, want 0", info.NumRedelivered)
		}
	}
	waitStats(t, s, workers.Stats{Handled: 2, Replied: 2, Expired: 1})
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"busy", "sentinel"}; !slices.Equal(called, want) {
		t.Errorf("handler called for %q, want %q", called, want)
	}
}
