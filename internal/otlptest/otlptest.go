// Package otlptest is an OpenTelemetry collector for tests: an OTLP trace
// receiver on loopback, over HTTP (protobuf, gzip or not) or gRPC, that
// decodes what exporters send with the official OTLP proto types and
// keeps the spans. It stops with the test. A Receiver is safe for
// concurrent use.
package otlptest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is one span as the receiver got it.
type Span struct {
	TraceID, SpanID string // hex
	ParentSpanID    string // hex; empty for a root span
	Name            string
	Kind            tracepb.Span_SpanKind
	// Service is the service.name of the span's resource, and Scope the
	// name of its instrumentation scope.
	Service, Scope string
	// Attrs are the span's attributes, each value as text (an int in
	// decimal).
	Attrs map[string]string
	// Links are the spans the span links to.
	Links []Link
	// Error says the span's status is Error.
	Error bool
}

// Link is a span a Span links to.
type Link struct{ TraceID, SpanID string }

func (s Span) String() string {
	return fmt.Sprintf("%s %q %s/%s parent %s %v", s.Service, s.Name, s.TraceID, s.SpanID, s.ParentSpanID, s.Attrs)
}

// Receiver keeps the spans exported to it.
type Receiver struct {
	// Endpoint is where exporters send: an http:// URL, the value of
	// OTEL_EXPORTER_OTLP_ENDPOINT for either protocol (an http:// URL
	// means no TLS for gRPC).
	Endpoint string

	mu      sync.Mutex // guards spans and changed
	spans   []Span
	changed chan struct{} // closed and replaced when spans are added
}

// NewHTTP starts a receiver of OTLP/HTTP (POST /v1/traces).
func NewHTTP(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{changed: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	t.Cleanup(srv.Close)
	r.Endpoint = srv.URL
	return r
}

// NewGRPC starts a receiver of OTLP/gRPC, without TLS.
func NewGRPC(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{changed: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, traceService{r: r})
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	r.Endpoint = "http://" + ln.Addr().String()
	return r
}

type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.Error(w, "want POST /v1/traces", http.StatusNotFound)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	p, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "want application/x-protobuf, not "+ct, http.StatusUnsupportedMediaType)
		return
	}
	var ex coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(p, &ex); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&ex)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// add keeps the spans of req.
func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	var spans []Span
	for _, rs := range req.ResourceSpans {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				s := Span{
					TraceID:      hex.EncodeToString(sp.TraceId),
					SpanID:       hex.EncodeToString(sp.SpanId),
					ParentSpanID: hex.EncodeToString(sp.ParentSpanId),
					Name:         sp.Name,
					Kind:         sp.Kind,
					Service:      service,
					Scope:        ss.GetScope().GetName(),
					Attrs:        attrs(sp.Attributes),
					Error:        sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
				}
				for _, l := range sp.Links {
					s.Links = append(s.Links, Link{hex.EncodeToString(l.TraceId), hex.EncodeToString(l.SpanId)})
				}
				spans = append(spans, s)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, spans...)
	close(r.changed)
	r.changed = make(chan struct{})
}

// attrs returns kvs as text.
func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = fmt.Sprint(v.IntValue)
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = fmt.Sprint(v.BoolValue)
		case *commonpb.AnyValue_DoubleValue:
			m[kv.Key] = fmt.Sprint(v.DoubleValue)
		case *commonpb.AnyValue_BytesValue:
			m[kv.Key] = hex.EncodeToString(v.BytesValue)
		default:
			m[kv.Key] = kv.GetValue().String()
		}
	}
	return m
}

// Spans returns the spans received so far, in order of arrival.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Wait returns the spans received once done reports that they are all
// that is expected, or fails the test after limit. flush, if not nil, is
// called before each look (a provider's ForceFlush: spans end after the
// reply a test waits for).
func (r *Receiver) Wait(t testing.TB, limit time.Duration, what string, flush func(), done func([]Span) bool) []Span {
	t.Helper()
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	tick := time.NewTicker(50 * time.Millisecond) // flushes again: spans that ended since
	defer tick.Stop()
	for {
		if flush != nil {
			flush()
		}
		r.mu.Lock()
		spans, changed := append([]Span(nil), r.spans...), r.changed
		r.mu.Unlock()
		if done(spans) {
			return spans
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-timeout.C:
			var b bytes.Buffer
			for _, s := range spans {
				fmt.Fprintf(&b, "\n  %v", s)
			}
			t.Fatalf("%s: not after %v; %d spans received:%s", what, limit, len(spans), b.String())
			return nil
		}
	}
}
