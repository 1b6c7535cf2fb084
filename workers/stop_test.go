package workers_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestStopUnderLoad restarts the instances of a durable group one after
// another, as a rolling update does, while requests keep arriving: each
// stop comes with requests running in the stopping instance and fetches
// of it open. Every request is answered once, about its handler time
// after it was sent: no request waits for the consumer's AckWait (a
// minute), as one would that JetStream delivered to a fetch the stopping
// instance no longer read, and none waits for the stopping instance's
// fetches to expire before it is handed to another instance.
func TestStopUnderLoad(t *testing.T) {
	const (
		handlerTime = 50 * time.Millisecond
		rate        = 400 // requests per second, for both instances
		restarts    = 6
		every       = 300 * time.Millisecond // between the restarts
		// limit is the longest a request may take to be answered: a
		// handler run in the stopping instance, cancelled, then one in
		// another instance, and a loaded machine's delays. It is far
		// less than a fetch's expiry (a second), let alone AckWait.
		limit = 2*handlerTime + 250*time.Millisecond
	)
	e := newEnv(t)
	var (
		mu      sync.Mutex // guards sent and replies
		sent    = map[string]time.Time{}
		replies = map[string][]time.Duration{} // latencies, by request id
	)
	rc := e.conn(t)
	if _, err := rc.Subscribe(e.reply+".*", func(m *nats.Msg) {
		at := time.Now()
		id := replyID(m)
		mu.Lock()
		replies[id] = append(replies[id], at.Sub(sent[id]))
		mu.Unlock()
	}); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := rc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}

	handler := workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		timer := time.NewTimer(handlerTime)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := w.Write([]byte(r.ID))
		return err
	})
	var stopped []*workers.Server
	instance := func() (*workers.Server, func() error) {
		s := &workers.Server{
			JetStream: e.newJS(t), Delivery: workers.Durable, Group: "g", Subjects: []string{subject},
			Handler: handler, AckWait: time.Minute, Concurrency: 128,
		}
		return s, start(t, s)
	}
	type running struct {
		s    *workers.Server
		stop func() error
	}
	var group []running
	for range 2 {
		s, stop := instance()
		group = append(group, running{s, stop})
	}
	e.waitPulling(t, "g", 2)

	// The load: requests at rate, published to the capture stream as the
	// gateway does, until the last restart is done.
	js := e.newJS(t)
	loadDone := make(chan struct{})
	var (
		ids     []string
		futures []jetstream.PubAckFuture
		loadErr error
	)
	stopLoad := make(chan struct{})
	go func() {
		defer close(loadDone)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-tick.C:
			case <-stopLoad:
				return
			}
			id := strconv.Itoa(i)
			msg := e.request(subject, id, nil, time.Time{})
			capture := &nats.Msg{Subject: schemas.CaptureSubject(prefix, msg.Subject), Header: msg.Header}
			mu.Lock()
			sent[id] = time.Now()
			mu.Unlock()
			f, err := js.PublishMsgAsync(capture)
			if err != nil {
				loadErr = err
				return
			}
			ids = append(ids, id)
			futures = append(futures, f)
		}
	}()

	restart := time.NewTicker(every)
	for range restarts {
		<-restart.C
		if err := group[0].stop(); err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
		stopped = append(stopped, group[0].s)
		s, stop := instance()
		group = append(group[1:], running{s, stop})
	}
	restart.Stop()
	close(stopLoad)
	<-loadDone
	if loadErr != nil {
		t.Fatalf("publish: %v", loadErr)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish %s: %v", ids[i], err)
		}
	}

	// Every request answered, at once: one that waits for AckWait would
	// take a minute.
	answered := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(replies) == len(ids)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitFor)
wait:
	for !answered() {
		select {
		case <-tick.C:
		case <-timeout:
			break wait
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var (
		unanswered []string
		tooLate    int
		slowest    time.Duration
		slowestID  string
	)
	for _, id := range ids {
		lat := replies[id]
		switch {
		case len(lat) == 0:
			unanswered = append(unanswered, id)
			continue
		case len(lat) > 1:
			t.Errorf("request %s answered %d times, want once", id, len(lat))
		}
		if lat[0] > limit {
			tooLate++
		}
		if lat[0] > slowest {
			slowest, slowestID = lat[0], id
		}
	}
	if len(unanswered) > 0 {
		t.Errorf("%d of %d requests not answered after %v (left to AckWait?): %s",
			len(unanswered), len(ids), waitFor, strings.Join(unanswered[:min(len(unanswered), 10)], " "))
	}
	if tooLate > 0 {
		t.Errorf("%d of %d requests answered later than %v after they were sent, request %s after %v",
			tooLate, len(ids), limit, slowestID, slowest.Round(time.Millisecond))
	}
	var given uint64
	for _, s := range stopped {
		given += s.Stats().Retried
	}
	t.Logf("%d requests, %d restarts, %d requests given back; slowest answered after %v",
		len(ids), restarts, given, slowest.Round(time.Millisecond))
}
