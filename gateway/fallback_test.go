package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestFallbackWhileCaptureRefused: a request whose capture copy the
// stream refuses (full, as a stream without a leader does not answer)
// reaches a durable group anyway, on its fallback subject, and is answered
// within its deadline; once the stream takes the copy, the instance that
// answered skips it, so the handler runs once per request.
func TestFallbackWhileCaptureRefused(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 3 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	subject := schemas.InSubject("udpgate", uint16(addrs[0].Port))
	_, js := natstest.JetStream(t, s)
	var calls atomic.Int32
	w := &workers.Server{
		JetStream: js,
		Delivery:  workers.Durable,
		Group:     "durable-echo",
		Subjects:  []string{subject},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			calls.Add(1)
			_, err := w.Write(r.Body)
			return err
		}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	wctx, stop := context.WithCancel(ctx)
	go func() { done <- w.Serve(wctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}()
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker stopped: %v", err)
	}

	// One request stored, then the stream takes no more.
	if reply, err := exchangeUDP(t, addrs[0].String(), []byte("stored"), 5*time.Second); err != nil || string(reply) != "stored" {
		t.Fatalf("first request: %q, %v", reply, err)
	}
	stream, err := js.Stream(ctx, schemas.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	full := cfg
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}

	sent := time.Now()
	reply, err := exchangeUDP(t, addrs[0].String(), []byte("fallen back"), 5*time.Second)
	if err != nil || string(reply) != "fallen back" {
		t.Fatalf("a durable group did not answer while the stream refused the copy: %q, %v", reply, err)
	}
	if took := time.Since(sent); took >= g.Deadline {
		t.Errorf("answered after %v, past the %v deadline", took, g.Deadline)
	}
	listener := itoa(addrs[0].Port) + "/raw"
	if st := g.Stats().Ingress[listener]; st.Fallback != 1 || st.Captured != 1 {
		t.Errorf("ingress %+v: want 1 fallback, 1 captured", st)
	}
	if st := w.Stats(); st.Fallback != 1 || st.Replied != 2 {
		t.Errorf("worker %+v: want 1 fallback, 2 replied", st)
	}

	// The stream takes the copy, tried again until the deadline; the
	// worker skips it.
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the copy stored", func() bool { return g.Stats().Ingress[listener].Captured == 2 })
	waitFor(t, "the stored copy skipped", func() bool { return w.Stats().Duplicates == 1 })
	if n := calls.Load(); n != 2 {
		t.Errorf("handler called %d times for 2 requests", n)
	}
	if st := g.Stats().Ingress[listener]; st.CaptureFailed != 0 || st.Fallback != 1 {
		t.Errorf("ingress %+v: want no gap, 1 fallback", st)
	}
}
