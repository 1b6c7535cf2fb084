package workers_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/workers"
)

// BenchmarkServer measures the SDK's cost per request: a fake gateway
// publishes raw requests to the stream (JetStream async publishes, window
// requests in flight) and a Server with an echo handler answers each on
// the reply subject. Allocations are the whole process's per request
// (embedded NATS server, publisher and Server together); compare them, and
// instruction counts, before and after a change to the SDK.
func BenchmarkServer(b *testing.B) {
	for _, window := range []int{1, 16} {
		b.Run("inflight-"+strconv.Itoa(window), func(b *testing.B) {
			benchServer(b, window)
		})
	}
}

func benchServer(b *testing.B, window int) {
	e := newEnv(b)
	s := &workers.Server{
		JetStream: e.js, Group: "bench", Subjects: []string{subject},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(r.Body)
			return err
		}),
	}
	serve(b, s)
	e.waitPulling(b, "bench", 1)

	// One template request; each publish gets its own id.
	body := make([]byte, 64)
	tmpl := e.request(subject, "", body, time.Now().Add(time.Hour))
	ids := make([]string, window)
	for i := range ids {
		ids[i] = "bench-" + strconv.Itoa(i)
	}
	send := func(i int) {
		h := make(nats.Header, len(tmpl.Header))
		for k, v := range tmpl.Header {
			h[k] = v
		}
		h.Set("udpgate-id", ids[i%window])
		h.Set("ce-id", ids[i%window])
		if _, err := e.js.PublishMsgAsync(&nats.Msg{Subject: subject, Header: h, Data: body}); err != nil {
			b.Fatalf("publish: %v", err)
		}
	}
	// Warm up: one request through the whole path.
	send(0)
	e.next(b)

	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for ; sent < min(window, b.N); sent++ {
		send(sent)
	}
	timeout := time.NewTimer(waitFor)
	defer timeout.Stop()
	for range b.N {
		timeout.Reset(waitFor)
		select {
		case <-e.replies:
		case <-timeout.C:
			b.Fatalf("no reply after %v (%d sent)", waitFor, sent)
		}
		if sent < b.N {
			send(sent)
			sent++
		}
	}
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publishes not acknowledged")
	}
}
