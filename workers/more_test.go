package workers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestReplyMore: in both deliveries, the replies a handler sends with
// ReplyMore are published in order, each with udpgate-more, and its final
// reply last, without; the request counts once, Replied.
func TestReplyMore(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			srv := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "more", Subjects: []string{subject},
				Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
					for _, part := range []string{"one", "two", "three"} {
						if err := r.ReplyMore(ctx, []byte(part)); err != nil {
							return err
						}
					}
					_, err := w.Write([]byte("last"))
					return err
				}),
			}
			start(t, srv)
			e.send(t, "r1", "go")
			for _, want := range []string{"one", "two", "three", "last"} {
				m := e.next(t)
				if string(m.Data) != want || replyID(m) != "r1" {
					t.Fatalf("reply %q to %q, want %q to r1", m.Data, replyID(m), want)
				}
				if more := m.Header.Get(schemas.HeaderMore); (more == "1") != (want != "last") {
					t.Errorf("reply %q: %s %q", want, schemas.HeaderMore, more)
				}
			}
			waitStats(t, srv, workers.Stats{Handled: 1, Replied: 1})
		})
	}
}

// TestReplyMoreRefused: ReplyMore sends nothing, and says why, on a CoAP
// request, with a context that is done, outside the Handle call of the
// Server that passed the request, and on a request no Server passed.
func TestReplyMoreRefused(t *testing.T) {
	e := newEnv(t)
	errs := make(chan error, 8)
	kept := make(chan *workers.Request, 1)
	handler := workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		errs <- r.ReplyMore(ctx, []byte("more"))
		done, cancel := context.WithCancel(ctx)
		cancel()
		errs <- r.ReplyMore(done, []byte("more"))
		kept <- r
		_, err := w.Write([]byte("final"))
		return err
	})
	start(t, &workers.Server{NATS: e.nc, Group: "coap", Subjects: []string{schemas.InSubject(prefix, coapPort) + ".>"}, Handler: handler})
	e.publish(t, e.coapMsg("c1", "GET", []string{"x"}, nil, nil))
	if m := e.next(t); string(m.Data) != "final" || m.Header.Get(schemas.HeaderMore) != "" {
		t.Fatalf("reply %q, %s %q; want the final reply alone", m.Data, schemas.HeaderMore, m.Header.Get(schemas.HeaderMore))
	}
	if err := <-errs; !errors.Is(err, workers.ErrNotRaw) {
		t.Errorf("ReplyMore on a CoAP request: %v, want ErrNotRaw", err)
	}
	if err := <-errs; !errors.Is(err, workers.ErrNotRaw) {
		t.Errorf("ReplyMore on a CoAP request with a done context: %v, want ErrNotRaw", err)
	}
	<-kept

	start(t, &workers.Server{NATS: e.nc, Group: "raw", Subjects: []string{subject}, Handler: handler})
	e.send(t, "r1", "go")
	if m := e.next(t); string(m.Data) != "more" || m.Header.Get(schemas.HeaderMore) != "1" {
		t.Fatalf("reply %q, %s %q; want the reply with more to follow", m.Data, schemas.HeaderMore, m.Header.Get(schemas.HeaderMore))
	}
	if m := e.next(t); string(m.Data) != "final" {
		t.Fatalf("reply %q, want the final one", m.Data)
	}
	if err := <-errs; err != nil {
		t.Errorf("ReplyMore on a raw request: %v", err)
	}
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Errorf("ReplyMore with a done context: %v, want context.Canceled", err)
	}
	r := <-kept
	if err := r.ReplyMore(context.Background(), []byte("after")); err == nil {
		t.Error("ReplyMore after the handler returned: nil error")
	}
	hand := &workers.Request{Protocol: schemas.ProtocolRaw, Reply: "udpgate.reply.node1.x"}
	if err := hand.ReplyMore(context.Background(), []byte("x")); err == nil {
		t.Error("ReplyMore on a request no Server passed: nil error")
	}
	select {
	case m := <-e.replies:
		t.Errorf("a refused reply was published: %q to %s", m.Data, m.Subject)
	case <-time.After(50 * time.Millisecond):
	}
}
