package workers_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// The trace context of a request the gateway traced: its ingress span.
const (
	ingressTrace      = "4bf92f3577b34da6a3ce929d0e0e4736"
	ingressSpan       = "00f067aa0ba902b7"
	ingressParent     = "00-" + ingressTrace + "-" + ingressSpan + "-01"
	ingressTraceState = "udpgate=t61rcWkgMzE"
)

// TestTraceContinued: a Server continues the trace of a request that
// carries one, in both deliveries: the handler's context holds the span,
// a child of the request's, and the reply carries that span's context;
// a request without one gets no span and its reply none. A failed
// handler's error reply carries the span's context too.
func TestTraceContinued(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			exp := tracetest.NewInMemoryExporter()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
			t.Cleanup(func() { tp.Shutdown(context.Background()) })
			seen := make(chan trace.SpanContext, 3)
			s := &workers.Server{
				NATS: e.conn(t), Delivery: d, Group: "traced", Subjects: []string{subject}, TracerProvider: tp,
				Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
					seen <- trace.SpanContextFromContext(ctx)
					if string(r.Body) == "fail" {
						return errors.New("handler failed")
					}
					_, err := w.Write(r.Body)
					return err
				}),
			}
			start(t, s)

			traced := func(id, body string) {
				msg := e.request(subject, id, []byte(body), time.Now().Add(time.Minute))
				msg.Header.Set("traceparent", ingressParent)
				msg.Header.Set("tracestate", ingressTraceState)
				e.publish(t, msg)
			}

			traced("t-1", "hello")
			sc := <-seen
			if sc.TraceID().String() != ingressTrace || !sc.IsSampled() || sc.IsRemote() || sc.SpanID().String() == ingressSpan {
				t.Errorf("handler's span context %v: want a local child span in trace %s", sc, ingressTrace)
			}
			got := e.next(t)
			if want := "00-" + ingressTrace + "-" + sc.SpanID().String() + "-01"; got.Header.Get("traceparent") != want || got.Header.Get("tracestate") != ingressTraceState {
				t.Errorf("reply traceparent %q tracestate %q, want %q %q", got.Header.Get("traceparent"), got.Header.Get("tracestate"), want, ingressTraceState)
			}
			span := endedSpan(t, exp, sc)
			if span.Parent().SpanID().String() != ingressSpan || !span.Parent().IsRemote() || span.Name() != "worker traced" || span.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("span %q kind %v, parent %v: want worker traced, a consumer, child of %s", span.Name(), span.SpanKind(), span.Parent(), ingressSpan)
			}
			checkAttrs(t, span, map[string]string{
				"udpgate.outcome": "replied", "udpgate.status": "ok", "messaging.message.id": "t-1",
				"messaging.consumer.group.name": "traced", "udpgate.delivery": d.String(), "udpgate.listener": "9000/raw",
			})

			e.send(t, "u-1", "plain")
			if sc := <-seen; sc.IsValid() {
				t.Errorf("untraced request: handler's context has span %v", sc)
			}
			if got := e.next(t); got.Header.Get("traceparent") != "" {
				t.Errorf("untraced request's reply has traceparent %q", got.Header.Get("traceparent"))
			}

			traced("t-2", "fail")
			sc = <-seen
			got = e.next(t)
			if got.Header.Get(schemas.HeaderStatus) != schemas.StatusError || !strings.Contains(got.Header.Get("traceparent"), sc.SpanID().String()) {
				t.Errorf("error reply %v: want status error and the span's traceparent (%s)", got.Header, sc.SpanID())
			}
			span = endedSpan(t, exp, sc)
			if span.Status().Code != codes.Error || len(span.Events()) == 0 {
				t.Errorf("failed request's span: status %v, events %v; want an error and its event", span.Status(), span.Events())
			}
			checkAttrs(t, span, map[string]string{"udpgate.outcome": "failed"})
			if n := len(exp.GetSpans()); n != 2 {
				t.Errorf("%d spans, want 2 (the untraced request has none)", n)
			}
		})
	}
}

// TestTraceWithoutProvider: a worker process that exports nothing (the
// global provider is OpenTelemetry's no-op one) still hands the
// request's trace context to its handler and to the reply, so that
// egress's span joins the trace, as a child of the ingress span.
func TestTraceWithoutProvider(t *testing.T) {
	e := newEnv(t)
	seen := make(chan trace.SpanContext, 1)
	s := &workers.Server{
		NATS: e.conn(t), Group: "untraced", Subjects: []string{subject},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			seen <- trace.SpanContextFromContext(ctx)
			_, err := w.Write(r.Body)
			return err
		}),
	}
	start(t, s)
	msg := e.request(subject, "t-1", []byte("hello"), time.Now().Add(time.Minute))
	msg.Header.Set("traceparent", ingressParent)
	e.publish(t, msg)
	if sc := <-seen; sc.TraceID().String() != ingressTrace || sc.SpanID().String() != ingressSpan {
		t.Errorf("handler's span context %v: want the request's", sc)
	}
	if got := e.next(t); got.Header.Get("traceparent") != ingressParent {
		t.Errorf("reply traceparent %q, want the request's %q", got.Header.Get("traceparent"), ingressParent)
	}
}

// endedSpan waits for the span sc to end and returns it.
func endedSpan(t *testing.T, exp *tracetest.InMemoryExporter, sc trace.SpanContext) sdktrace.ReadOnlySpan {
	t.Helper()
	var span sdktrace.ReadOnlySpan
	poll(t, "span "+sc.SpanID().String()+" ended", func() bool {
		for _, s := range exp.GetSpans().Snapshots() {
			if s.SpanContext().SpanID() == sc.SpanID() {
				span = s
				return true
			}
		}
		return false
	})
	return span
}

// checkAttrs checks some of span's attributes, as text.
func checkAttrs(t *testing.T, span sdktrace.ReadOnlySpan, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, kv := range span.Attributes() {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span %q: %s = %q, want %q (%v)", span.Name(), k, got[k], v, got)
		}
	}
}
