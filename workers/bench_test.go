package workers_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// BenchmarkServer measures the SDK's cost per request: a fake gateway
// publishes raw requests (Direct: core NATS requests; Durable: capture
// copies, JetStream async publishes), window requests in flight, and a
// Server with an echo handler answers each on its reply subject.
// Allocations are the whole process's per request (embedded NATS server,
// publisher and Server together); compare them, and instruction counts,
// before and after a change to the SDK.
func BenchmarkServer(b *testing.B) {
	for _, d := range deliveries {
		for _, window := range []int{1, 16} {
			b.Run(d.String()+"/inflight-"+strconv.Itoa(window), func(b *testing.B) {
				benchServer(b, d, window)
			})
		}
	}
}

func benchServer(b *testing.B, d workers.Delivery, window int) {
	e := newEnv(b)
	s := &workers.Server{
		NATS: e.conn(b), Delivery: d, Group: "bench", Subjects: []string{subject},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(r.Body)
			return err
		}),
	}
	start(b, s)

	// One template request; each publish gets its own id.
	body := make([]byte, 64)
	tmpl := e.request(subject, "", body, time.Now().Add(time.Hour))
	ids := make([]string, window)
	for i := range ids {
		ids[i] = "bench-" + strconv.Itoa(i)
	}
	capture := schemas.CaptureSubject(prefix, subject)
	send := func(i int) {
		id := ids[i%window]
		reply := e.reply + "." + id
		h := make(nats.Header, len(tmpl.Header))
		for k, v := range tmpl.Header {
			h[k] = v
		}
		h.Set(schemas.HeaderID, id)
		h.Set(schemas.HeaderReply, reply)
		var err error
		if d == workers.Direct {
			err = e.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: reply, Header: h, Data: body})
		} else {
			_, err = e.js.PublishMsgAsync(&nats.Msg{Subject: capture, Header: h, Data: body})
		}
		if err != nil {
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
