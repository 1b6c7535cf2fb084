package workers_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// A handler that starts a span of its own, as a child of the SDK's span
// for the request, which the handler's context holds when the gateway
// traced the request. A worker process sets its provider up once (or
// leaves the global one, otel.SetTracerProvider); here an in-memory one
// shows the spans.
func ExampleServer_tracing() {
	nc, stop := exampleGateway()
	defer stop()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))

	srv := &workers.Server{
		NATS:           nc,
		Group:          "upper",
		Subjects:       []string{"udpgate.in.9000"},
		TracerProvider: tp, // nil: OpenTelemetry's global provider
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			ctx, span := trace.SpanFromContext(ctx).TracerProvider().Tracer("example").Start(ctx, "upper-case")
			defer span.End()
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	// A request the gateway traced: its ingress span's context.
	msg := exampleMsg(schemas.InSubject(schemas.DefaultPrefix, 9000), "9000/raw", schemas.TypeRaw, "hello")
	msg.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		panic(err)
	}
	cancel()
	<-done // the SDK's span has ended

	fmt.Println(string(reply.Data))
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans.GetSpans().Snapshots() {
		byName[s.Name()] = s
	}
	handler, worker := byName["upper-case"], byName["worker upper"]
	fmt.Println("the handler's span is the SDK's child:", handler.Parent().SpanID() == worker.SpanContext().SpanID())
	fmt.Println("the SDK's span is the gateway's child:", worker.Parent().SpanID().String() == "00f067aa0ba902b7")
	fmt.Println("the reply carries the SDK's span:", strings.Contains(reply.Header.Get("traceparent"), worker.SpanContext().SpanID().String()))
	// Output:
	// HELLO
	// the handler's span is the SDK's child: true
	// the SDK's span is the gateway's child: true
	// the reply carries the SDK's span: true
}
