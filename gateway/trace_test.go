package gateway

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/internal/otlptest"
	"github.com/udpgate/udpgate/internal/tracing"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// tracedProvider returns the tracer provider of a process named service,
// which exports its spans in batches by OTLP/HTTP to rcv, and counts the
// spans it starts. It shuts down when the test ends, after the parts the
// test starts later.
func tracedProvider(t *testing.T, rcv *otlptest.Receiver, service string) (*sdktrace.TracerProvider, *atomic.Int64) {
	t.Helper()
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(rcv.Endpoint+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	started := new(atomic.Int64)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSpanProcessor(startCounter{started}),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(service))),
	)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			t.Errorf("%s: tracer provider shutdown: %v", service, err)
		}
	})
	return tp, started
}

// startCounter counts the spans started.
type startCounter struct{ n *atomic.Int64 }

func (c startCounter) OnStart(context.Context, sdktrace.ReadWriteSpan) { c.n.Add(1) }
func (startCounter) OnEnd(sdktrace.ReadOnlySpan)                       {}
func (startCounter) Shutdown(context.Context) error                    { return nil }
func (startCounter) ForceFlush(context.Context) error                  { return nil }

// flush exports what the providers' spans that have ended.
func flush(t *testing.T, tps ...*sdktrace.TracerProvider) func() {
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, tp := range tps {
			if err := tp.ForceFlush(ctx); err != nil {
				t.Errorf("flush: %v", err)
			}
		}
	}
}

// tracedGateway serves a gateway with a raw, a coap and a second raw
// listener on 127.0.0.1, tracing with tp at sample, and returns their
// addresses.
func tracedGateway(t *testing.T, s *server.Server, tp trace.TracerProvider, sample float64) (raw, coap, durable *net.UDPAddr) {
	t.Helper()
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "trace-node", TracerProvider: tp, TraceSample: sample}
	var addrs []*net.UDPAddr
	for _, proto := range []string{schemas.ProtocolRaw, schemas.ProtocolCoAP, schemas.ProtocolRaw} {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: proto})
		addrs = append(addrs, c.LocalAddr().(*net.UDPAddr))
	}
	serveGateway(t, g)
	return addrs[0], addrs[1], addrs[2]
}

// tracedWorkers serves, with tp, the SDK's worker groups of a
// tracedGateway: echo (direct) on raw, a Mux answering GET /time (direct)
// on coap, echo-durable (durable) on durable. Each handler fails the
// request unless its context holds a sampled span when the request
// carries a trace context, and none when it does not.
func tracedWorkers(t *testing.T, s *server.Server, tp trace.TracerProvider, raw, coap, durable *net.UDPAddr) {
	t.Helper()
	checked := func(h workers.HandlerFunc) workers.HandlerFunc {
		return func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			sc := trace.SpanContextFromContext(ctx)
			if traced := tracing.Extract(r.Header).IsValid(); sc.IsSampled() != traced {
				return fmt.Errorf("request traced %v, handler's context %v", traced, sc)
			}
			return h(ctx, w, r)
		}
	}
	echo := checked(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
		_, err := w.Write(r.Body)
		return err
	})
	mux := workers.NewMux()
	mux.RouteFunc("GET /time", checked(func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
		_, err := w.Write([]byte("2026-11-23T00:00:00Z"))
		return err
	}))
	for _, w := range []*workers.Server{
		{Group: "echo", Subjects: []string{schemas.InSubject(schemas.DefaultPrefix, uint16(raw.Port))}, Handler: echo},
		{Group: "coap-time", Subjects: mux.Subjects(schemas.DefaultPrefix, uint16(coap.Port)), Handler: mux},
		{Group: "echo-durable", Delivery: workers.Durable, Subjects: []string{schemas.InSubject(schemas.DefaultPrefix, uint16(durable.Port))}, Handler: echo},
	} {
		w.NATS, w.TracerProvider, w.Silent = natstest.Connect(t, s), tp, true
		serveWorker(t, w)
	}
}

// TestTraceAcrossTheBus: with every request sampled, one request's spans
// (the gateway's ingress span, the worker's, the gateway's egress span)
// reach an OTLP receiver in one trace, each the child of the one before,
// for raw and CoAP requests, direct and durable groups, and a worker
// written against the contract alone that continues the trace by hand
// as schemas/README.md says.
func TestTraceAcrossTheBus(t *testing.T) {
	rcv := otlptest.NewHTTP(t)
	gtp, _ := tracedProvider(t, rcv, "gateway")
	wtp, _ := tracedProvider(t, rcv, "worker")
	s := natstest.RunServer(t)
	raw, coap, durable := tracedGateway(t, s, gtp, 1)
	tracedWorkers(t, s, wtp, raw, coap, durable)

	// A worker in another language: no SDK, the trace continued from
	// the headers (schemas/README.md), its own span id in the reply's
	// traceparent.
	var foreign sync.Map // request id -> the foreign worker's span id
	contract, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "trace-node-2", TracerProvider: gtp, TraceSample: 1,
		Listeners: []Listener{{Conn: contract, Protocol: schemas.ProtocolRaw}}}
	serveGateway(t, g)
	nc := natstest.Connect(t, s)
	sub, err := nc.QueueSubscribe(schemas.InSubject(schemas.DefaultPrefix, uint16(contract.LocalAddr().(*net.UDPAddr).Port)), "by-hand", func(m *nats.Msg) {
		// traceparent: 00-TRACEID-PARENTID-FLAGS; the child keeps the
		// trace id and flags, with a span id of its own.
		parts := strings.Split(m.Header.Get("traceparent"), "-")
		reply := nats.NewMsg(m.Reply)
		reply.Data = append([]byte("by hand:"), m.Data...)
		if len(parts) == 4 {
			child := fmt.Sprintf("%016x", 0x1234567800000000|uint64(len(m.Data)))
			reply.Header.Set("traceparent", strings.Join([]string{parts[0], parts[1], child, parts[3]}, "-"))
			if ts := m.Header.Get("tracestate"); ts != "" {
				reply.Header.Set("tracestate", ts)
			}
			foreign.Store(m.Header.Get(schemas.HeaderID), child)
		}
		m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, listener, worker string
		send                   func(t *testing.T) string // the reply
		want                   string
	}{
		{"raw direct", schemas.Listener(uint16(raw.Port), schemas.ProtocolRaw), "worker echo",
			func(t *testing.T) string { return udpRequest(t, raw, "hello") }, "hello"},
		{"coap direct", schemas.Listener(uint16(coap.Port), schemas.ProtocolCoAP), "worker coap-time",
			func(t *testing.T) string { return coapGet(t, coap, "/time") }, "2026-11-23T00:00:00Z"},
		{"raw durable", schemas.Listener(uint16(durable.Port), schemas.ProtocolRaw), "worker echo-durable",
			func(t *testing.T) string { return udpRequest(t, durable, "stored") }, "stored"},
		{"raw, worker in another language", schemas.Listener(uint16(contract.LocalAddr().(*net.UDPAddr).Port), schemas.ProtocolRaw), "",
			func(t *testing.T) string { return udpRequest(t, contract.LocalAddr().(*net.UDPAddr), "abc") }, "by hand:abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.send(t); got != tt.want {
				t.Fatalf("reply %q, want %q", got, tt.want)
			}
			var in, work, out otlptest.Span
			rcv.Wait(t, 20*time.Second, "the request's spans", flush(t, gtp, wtp), func(spans []otlptest.Span) bool {
				var ok bool
				in, work, out, ok = chain(spans, tt.listener, tt.worker != "")
				return ok
			})
			t.Logf("ingress %v\nworker %v\negress %v", in, work, out)
			id := in.Attrs["messaging.message.id"]
			checkSpan(t, "ingress", in, "gateway", "ingress "+tt.listener, tracepb.Span_SPAN_KIND_SERVER, map[string]string{
				"udpgate.listener": tt.listener, "udpgate.outcome": "published", "udpgate.node": in.Attrs["udpgate.node"],
				"messaging.system": "nats", "network.peer.address": "127.0.0.1", "network.transport": "udp",
			})
			if in.ParentSpanID != "" || id == "" {
				t.Errorf("ingress span has parent %q and id %q: want a root and the request's ce-id", in.ParentSpanID, id)
			}
			checkSpan(t, "egress", out, "gateway", "egress "+tt.listener, tracepb.Span_SPAN_KIND_CONSUMER, map[string]string{
				"udpgate.listener": tt.listener, "udpgate.outcome": "sent", "messaging.message.id": id, "network.peer.address": "127.0.0.1",
			})
			if tt.worker == "" {
				want, _ := foreign.Load(id)
				if out.TraceID != in.TraceID || out.ParentSpanID != want {
					t.Errorf("egress span %s/%s, parent %s: want trace %s and the foreign worker's span %v", out.TraceID, out.SpanID, out.ParentSpanID, in.TraceID, want)
				}
				return
			}
			checkSpan(t, "worker", work, "worker", tt.worker, tracepb.Span_SPAN_KIND_CONSUMER, map[string]string{
				"udpgate.listener": tt.listener, "udpgate.outcome": "replied", "udpgate.status": "ok", "messaging.message.id": id,
			})
			if work.ParentSpanID != in.SpanID || out.ParentSpanID != work.SpanID || work.TraceID != in.TraceID || out.TraceID != in.TraceID {
				t.Errorf("not one chain: ingress %s/%s, worker %s/%s parent %s, egress %s/%s parent %s",
					in.TraceID, in.SpanID, work.TraceID, work.SpanID, work.ParentSpanID, out.TraceID, out.SpanID, out.ParentSpanID)
			}
		})
	}
}

// chain finds, in spans, the ingress span of listener and, in its trace,
// the worker span that is its child (if worker) and the egress span that
// is the worker's child (or any egress span of the trace, if not worker).
func chain(spans []otlptest.Span, listener string, worker bool) (in, work, out otlptest.Span, ok bool) {
	for _, s := range spans {
		if s.Scope != "github.com/udpgate/udpgate/ingress" || s.Attrs["udpgate.listener"] != listener {
			continue
		}
		in = s
		var found bool
		for _, w := range spans {
			if worker && w.Scope == "github.com/udpgate/udpgate/workers" && w.ParentSpanID == in.SpanID {
				work, found = w, true
			}
		}
		if worker && !found {
			return in, work, out, false
		}
		for _, e := range spans {
			if e.Scope == "github.com/udpgate/udpgate/egress" && e.TraceID == in.TraceID && (!worker || e.ParentSpanID == work.SpanID) {
				return in, work, e, true
			}
		}
	}
	return in, work, out, false
}

// checkSpan checks a span's service, name, kind and some of its
// attributes.
func checkSpan(t *testing.T, what string, s otlptest.Span, service, name string, kind tracepb.Span_SpanKind, attrs map[string]string) {
	t.Helper()
	if s.Service != service || s.Name != name || s.Kind != kind || s.Error {
		t.Errorf("%s span: %s %q kind %v error %v; want %s %q kind %v", what, s.Service, s.Name, s.Kind, s.Error, service, name, kind)
	}
	for k, v := range attrs {
		if s.Attrs[k] != v {
			t.Errorf("%s span: %s = %q, want %q (%v)", what, k, s.Attrs[k], v, s.Attrs)
		}
	}
}

// udpRequest sends body to addr and returns the reply.
func udpRequest(t *testing.T, addr *net.UDPAddr, body string) string {
	t.Helper()
	reply, err := exchangeUDP(t, addr.String(), []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("no reply to %q: %v", body, err)
	}
	return string(reply)
}

// coapGet sends a CoAP GET of path to addr with go-coap's client and
// returns the response's payload.
func coapGet(t *testing.T, addr *net.UDPAddr, path string) string {
	t.Helper()
	co := dialCoAP(t, addr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := co.Get(ctx, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, _ := resp.ReadBody()
	return string(body)
}

// TestTraceOff: with a tracer provider but a sample of 0, no span is
// started anywhere, nothing is exported, and no request carries a trace
// context.
func TestTraceOff(t *testing.T) {
	rcv := otlptest.NewHTTP(t)
	gtp, gstarted := tracedProvider(t, rcv, "gateway")
	wtp, wstarted := tracedProvider(t, rcv, "worker")
	s := natstest.RunServer(t)

	// Every request published, as a worker sees it.
	var mu sync.Mutex
	var seen []nats.Header
	spy := natstest.Connect(t, s)
	sub, err := spy.Subscribe(schemas.InWildcard(schemas.DefaultPrefix), func(m *nats.Msg) {
		mu.Lock()
		seen = append(seen, m.Header)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}

	raw, coap, durable := tracedGateway(t, s, gtp, 0)
	tracedWorkers(t, s, wtp, raw, coap, durable)
	if got := udpRequest(t, raw, "hello"); got != "hello" {
		t.Errorf("raw reply %q", got)
	}
	if got := coapGet(t, coap, "/time"); got != "2026-11-23T00:00:00Z" {
		t.Errorf("coap reply %q", got)
	}
	if got := udpRequest(t, durable, "stored"); got != "stored" {
		t.Errorf("durable reply %q", got)
	}
	waitFor(t, "the spy to see the three requests", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 3
	})
	mu.Lock()
	for _, h := range seen {
		for _, k := range []string{tracing.HeaderTraceParent, tracing.HeaderTraceState} {
			if v, ok := h[k]; ok {
				t.Errorf("request %s carries %s %q", h.Get(schemas.HeaderID), k, v)
			}
		}
	}
	mu.Unlock()
	flush(t, gtp, wtp)()
	if n, m := gstarted.Load(), wstarted.Load(); n != 0 || m != 0 {
		t.Errorf("spans started: gateway %d, workers %d; want none", n, m)
	}
	if spans := rcv.Spans(); len(spans) != 0 {
		t.Errorf("%d spans exported, want none: %v", len(spans), spans)
	}
}

// BenchmarkRoundTripGatewayTraced is BenchmarkRoundTripGateway with
// every request traced (UDPGATE_TRACE_SAMPLE=1) by a provider that
// batches its spans to an exporter that drops them: the cost of the
// gateway's spans, ingress and egress, without the export. The worker
// copies the request's trace context onto its reply, as a worker that
// does not trace itself should.
func BenchmarkRoundTripGatewayTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	s := natstest.RunServer(b)
	g := &Gateway{TracerProvider: tp, TraceSample: 1}
	addrs := testGateway(b, s, g, "127.0.0.1:0")
	nc := natstest.Connect(b, s)
	sub, err := nc.QueueSubscribe(schemas.InSubject("udpgate", uint16(addrs[0].Port)), "echo", func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		tracing.Copy(reply.Header, m.Header)
		reply.Data = m.Data
		m.RespondMsg(reply)
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	roundTrips(b, addrs[0])
}

// discardSpans is a span exporter that drops what it is given.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }
