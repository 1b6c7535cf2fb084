package builtin_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// TestServe runs each built-in worker behind a workers.Server on a real
// JetStream and sends it a request as the gateway does.
func TestServe(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		handler workers.Handler
		body    string
		want    string
	}{
		{"echo", builtin.Echo, "ping", "ping"},
		{"time", builtin.Time{Now: func() time.Time { return now }}, `[7,"time?"]`, `[7,"The time is 2026-01-02T03:04:05Z"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := natstest.RunServer(t)
			nc, js := natstest.JetStream(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name:      schemas.StreamIn,
				Subjects:  []string{schemas.InWildcard(schemas.DefaultPrefix)},
				Storage:   jetstream.FileStorage,
				Retention: jetstream.LimitsPolicy,
			}); err != nil {
				t.Fatalf("create stream: %v", err)
			}
			subject := schemas.InSubject(schemas.DefaultPrefix, 9000)
			s := &workers.Server{JetStream: js, Group: tt.name, Subjects: []string{subject}, Handler: tt.handler}
			serveCtx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Serve(serveCtx) }()
			defer func() {
				stop()
				if err := <-done; err != nil {
					t.Errorf("Serve = %v", err)
				}
			}()
			for {
				c, err := js.Consumer(ctx, schemas.StreamIn, tt.name)
				if err == nil && c.CachedInfo().NumWaiting > 0 {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatal("worker not pulling")
				case <-time.After(5 * time.Millisecond):
				}
			}

			replies, err := nc.SubscribeSync(schemas.ReplySubject(schemas.DefaultPrefix, "node1"))
			if err != nil {
				t.Fatal(err)
			}
			msg := nats.NewMsg(subject)
			msg.Header.Set(schemas.HeaderID, "42")
			msg.Header.Set(schemas.HeaderListener, "9000/raw")
			msg.Header.Set(schemas.HeaderReply, replies.Subject)
			msg.Data = []byte(tt.body)
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
			reply, err := replies.NextMsgWithContext(ctx)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			if got := string(reply.Data); got != tt.want || reply.Header.Get(schemas.HeaderID) != "42" {
				t.Errorf("reply %s=%q %q, want 42 %q", schemas.HeaderID, reply.Header.Get(schemas.HeaderID), got, tt.want)
			}
		})
	}
}
