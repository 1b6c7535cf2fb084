package workers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/workers"
)

// TestServeServerLostStore: a NATS server that restarts without its store
// (memory storage) has lost the group's consumer; Serve returns an error
// saying so rather than waiting forever, so that a supervisor restarts the
// worker and it creates the consumer again.
func TestServeServerLostStore(t *testing.T) {
	opts := natstest.Options(t)
	srv := natstest.Start(t, opts)
	_, js := natstest.JetStream(t, srv)
	createStream(t, js, jetstream.MemoryStorage)
	s := &workers.Server{
		JetStream: js, Delivery: workers.Durable, Group: "g", Subjects: []string{subject},
		Handler: workers.HandlerFunc(func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil }),
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	select {
	case <-s.Ready():
	case <-time.After(waitFor):
		t.Fatal("not ready")
	}
	natstest.Restart(t, srv, opts)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "consume g on stream UDPGATE_IN") {
			t.Errorf("Serve = %v, want a consume error", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after the server lost the consumer")
	}
}
