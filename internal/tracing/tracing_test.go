package tracing

import (
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
)

const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestExtractInject(t *testing.T) {
	tests := []struct {
		name   string
		header nats.Header
		valid  bool
	}{
		{"none", nats.Header{}, false},
		{"nil", nil, false},
		{"sampled", nats.Header{"traceparent": {parent}, "tracestate": {"k=v"}}, true},
		{"not sampled", nats.Header{"traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}}, true},
		{"malformed", nats.Header{"traceparent": {"00-xyz-01"}}, false},
		{"zero trace id", nats.Header{"traceparent": {"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}}, false},
		{"an HTTP spelling is not ours", nats.Header{"Traceparent": {parent}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := Extract(tt.header)
			if sc.IsValid() != tt.valid {
				t.Fatalf("Extract: valid %v, want %v", sc.IsValid(), tt.valid)
			}
			if !sc.IsValid() {
				return
			}
			if !sc.IsRemote() {
				t.Error("extracted span context is not remote")
			}
			h := nats.Header{}
			Inject(h, sc)
			for _, k := range []string{HeaderTraceParent, HeaderTraceState} {
				if h.Get(k) != tt.header.Get(k) {
					t.Errorf("Inject: %s %q, want %q", k, h.Get(k), tt.header.Get(k))
				}
			}
			c := nats.Header{"other": {"x"}}
			Copy(c, tt.header)
			if c.Get(HeaderTraceParent) != tt.header.Get(HeaderTraceParent) || c.Get("other") != "x" {
				t.Errorf("Copy: %v", c)
			}
		})
	}
	h := nats.Header{}
	Inject(h, trace.SpanContext{})
	if len(h) != 0 {
		t.Errorf("Inject of an invalid span context set %v", h)
	}
}

// The path of every untraced message does not allocate.
func TestExtractNoTraceDoesNotAllocate(t *testing.T) {
	h := nats.Header{"ce-id": {"1"}}
	if n := testing.AllocsPerRun(100, func() {
		if Extract(h).IsValid() || Carries(h) || Sample(0) {
			t.Fatal("traced")
		}
	}); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

func TestSample(t *testing.T) {
	for _, ratio := range []float64{0, -1} {
		for range 1000 {
			if Sample(ratio) {
				t.Fatalf("Sample(%v) chose a request", ratio)
			}
		}
	}
	for _, ratio := range []float64{1, 2} {
		for range 1000 {
			if !Sample(ratio) {
				t.Fatalf("Sample(%v) left a request out", ratio)
			}
		}
	}
	// 10,000 draws at 1/4: 2,500 expected, σ ≈ 43; ±500 is over 11σ.
	n := 0
	for range 10000 {
		if Sample(0.25) {
			n++
		}
	}
	if n < 2000 || n > 3000 {
		t.Errorf("Sample(0.25) chose %d of 10000", n)
	}
}
