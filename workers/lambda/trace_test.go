package lambda

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/workers"
)

// clientContexts is a Lambda Invoke endpoint that records the
// ClientContext (X-Amz-Client-Context) of each invocation, decoded, and
// answers with result, or a function error if result is empty.
type clientContexts struct {
	mu   sync.Mutex       // guards seen
	seen []map[string]any // nil for an invocation without one
}

func (c *clientContexts) start(t *testing.T, result string) *Bridge {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		var cc map[string]any
		if v := r.Header.Get("X-Amz-Client-Context"); v != "" {
			p, err := base64.StdEncoding.DecodeString(v)
			if err == nil {
				err = json.Unmarshal(p, &cc)
			}
			if err != nil {
				t.Errorf("ClientContext %q: %v", v, err)
			}
		}
		c.mu.Lock()
		c.seen = append(c.seen, cc)
		c.mu.Unlock()
		if result == "" {
			w.Header().Set("X-Amz-Function-Error", "Unhandled")
			w.Write([]byte(`{"errorMessage": "boom"}`))
			return
		}
		w.Write([]byte(result))
	}))
	t.Cleanup(srv.Close)
	f := &fakeLambda{URL: srv.URL}
	return &Bridge{Client: f.client(), Function: "traced"}
}

// traceparent returns the traceparent a recorded ClientContext carries.
func (c *clientContexts) traceparent(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	custom, _ := c.seen[i]["custom"].(map[string]any)
	tp, _ := custom["traceparent"].(string)
	return tp
}

// request returns a raw request, and the context the worker SDK hands a
// handler: with a span of tp's if traced.
func request(t *testing.T, tp trace.TracerProvider, traced bool) (context.Context, *workers.Request, trace.Span) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	r := &workers.Request{ID: "id-1", Protocol: "raw", Listener: "9000/raw", Port: 9000, Body: []byte("hi"), Header: nats.Header{}, Deadline: time.Now().Add(10 * time.Second)}
	if !traced {
		return ctx, r, nil
	}
	ctx, span := tp.Tracer("test").Start(ctx, "worker test")
	return ctx, r, span
}

// TestTraceInvocation: an invocation for a traced request is a span of
// its own, a child of the request's, whose context the function receives
// in its ClientContext; an untraced request's invocation has neither.
func TestTraceInvocation(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })

	var cc clientContexts
	b := cc.start(t, `"ok"`)
	ctx, r, parent := request(t, tp, true)
	w := &recorder{}
	if err := b.Handle(ctx, w, r); err != nil || string(w.body) != "ok" {
		t.Fatalf("Handle: %v, reply %q", err, w.body)
	}
	parent.End()
	spans := exp.GetSpans().Snapshots()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want the invocation's and the request's", len(spans))
	}
	inv := spans[0]
	if inv.Name() != "lambda traced" || inv.SpanKind() != trace.SpanKindClient || inv.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("invocation span %q kind %v parent %v: want lambda traced, a client, child of %v", inv.Name(), inv.SpanKind(), inv.Parent().SpanID(), parent.SpanContext().SpanID())
	}
	want := "00-" + inv.SpanContext().TraceID().String() + "-" + inv.SpanContext().SpanID().String() + "-01"
	if got := cc.traceparent(0); got != want {
		t.Errorf("ClientContext traceparent %q, want the invocation span's %q", got, want)
	}

	ctx, r, _ = request(t, tp, false)
	if err := b.Handle(ctx, &recorder{}, r); err != nil {
		t.Fatal(err)
	}
	cc.mu.Lock()
	if cc.seen[1] != nil {
		t.Errorf("untraced request's invocation has ClientContext %v", cc.seen[1])
	}
	cc.mu.Unlock()
	if n := len(exp.GetSpans()); n != 2 {
		t.Errorf("%d spans, want no more for an untraced request", n)
	}

	// A function error: the span says so.
	exp.Reset()
	var failing clientContexts
	b = failing.start(t, "")
	ctx, r, parent = request(t, tp, true)
	if err := b.Handle(ctx, &recorder{}, r); err == nil {
		t.Fatal("a function error, and Handle returned nil")
	}
	parent.End()
	if inv := exp.GetSpans().Snapshots()[0]; inv.Status().Code != codes.Error {
		t.Errorf("failed invocation's span has status %v", inv.Status())
	}
}

// TestTraceBatch: a batch's invocation is a child of its first traced
// request's span, linked to the other traced requests' spans.
func TestTraceBatch(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	var cc clientContexts
	b := cc.start(t, `{"Replies": []}`)
	b.Shape, b.BatchSize, b.BatchWindow = ShapeBatch, 3, time.Hour
	t.Cleanup(func() { b.Close() })

	parents := make(chan trace.SpanContext, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			ctx, r, span := request(t, tp, i < 2) // the third untraced
			if span != nil {
				parents <- span.SpanContext()
				defer span.End()
			}
			if err := b.Handle(ctx, &recorder{}, r); err != nil {
				t.Errorf("Handle: %v", err)
			}
		})
	}
	wg.Wait()
	close(parents)
	traced := map[trace.SpanID]bool{}
	for sc := range parents {
		traced[sc.SpanID()] = true
	}
	var inv sdktrace.ReadOnlySpan
	for _, s := range exp.GetSpans().Snapshots() {
		if s.Name() == "lambda traced" {
			inv = s
		}
	}
	if inv == nil {
		t.Fatal("no invocation span")
	}
	if !traced[inv.Parent().SpanID()] || len(inv.Links()) != 1 || !traced[inv.Links()[0].SpanContext.SpanID()] || inv.Links()[0].SpanContext.SpanID() == inv.Parent().SpanID() {
		t.Errorf("batch invocation: parent %v, links %v; want one traced request as parent, the other as link", inv.Parent().SpanID(), inv.Links())
	}
	if cc.traceparent(0) == "" {
		t.Error("batch invocation without a traceparent in its ClientContext")
	}
}
