package workers

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// t0 is the start of the internal tests' clock.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestEstimate(t *testing.T) {
	const now = time.Minute // monotonic
	tests := []struct {
		name  string
		calls []time.Duration // recorded in this order, all at now
		want  time.Duration
	}{
		{"none", nil, 0},
		{"one call", []time.Duration{ms(7)}, ms(7)},
		// Of 64 calls the 95th percentile is the 4th slowest (the 61st
		// of 64): three outliers do not move it, four do.
		{"three slow of 64", append(repeat(ms(10), 61), ms(90), ms(80), ms(70)), ms(10)},
		{"four slow of 64", append(repeat(ms(10), 60), ms(90), ms(80), ms(70), ms(60)), ms(60)},
		// Of 20 calls, the 19th: the second slowest.
		{"two slow of 20", append(repeat(ms(10), 18), ms(50), ms(40)), ms(40)},
		// Only the last 64 calls count.
		{"window", append(repeat(ms(50), 64), repeat(ms(10), 64)...), ms(10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e estimate
			for _, d := range tt.calls {
				e.record(d, now)
			}
			if got := e.get(now); got != tt.want {
				t.Errorf("estimate = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestEstimateTTL: calls older than estimateTTL are forgotten, so that an
// estimate that sheds every request, and so learns nothing new, does not
// last.
func TestEstimateTTL(t *testing.T) {
	var e estimate
	start := time.Minute
	for range 10 {
		e.record(time.Second, start)
	}
	if got := e.get(start + estimateTTL); got != time.Second {
		t.Errorf("estimate after estimateTTL = %v, want 1s", got)
	}
	later := start + estimateTTL + time.Millisecond
	if got := e.get(later); got != 0 {
		t.Errorf("estimate after more than estimateTTL = %v, want none", got)
	}
	e.record(ms(5), later)
	if got := e.get(later); got != ms(5) {
		t.Errorf("estimate after a new call = %v, want 5ms: the old calls are forgotten", got)
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}

func TestCannotFinish(t *testing.T) {
	now := t0
	tests := []struct {
		name     string
		deadline time.Time
		est      time.Duration
		want     bool
	}{
		{"no deadline", time.Time{}, time.Hour, false},
		{"no estimate, time left", now.Add(time.Millisecond), 0, false},
		{"no estimate, deadline now", now, 0, true},
		{"passed", now.Add(-time.Millisecond), 0, true},
		{"less left than the estimate", now.Add(ms(99)), ms(100), true},
		{"as much as the estimate", now.Add(ms(100)), ms(100), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cannotFinish(tt.deadline, now, tt.est); got != tt.want {
				t.Errorf("cannotFinish = %t, want %t", got, tt.want)
			}
		})
	}
}

func TestOverloadHeader(t *testing.T) {
	source := func(protocol string) nats.Header {
		return nats.Header{schemas.HeaderSource: {schemas.Source("n1", schemas.Listener(5683, protocol))}}
	}
	typed := func(typ string) nats.Header { return nats.Header{schemas.HeaderType: {typ}} }
	coap := func(maxAge string) nats.Header {
		return nats.Header{schemas.HeaderCoAPCode: {"5.03"}, schemas.HeaderCoAPMaxAge: {maxAge}}
	}
	rpc := nats.Header{schemas.HeaderRPCStatus: {"8"}, schemas.HeaderRPCError: {"overloaded: retry later"}}
	tests := []struct {
		name    string
		request nats.Header
		est     time.Duration
		want    nats.Header
	}{
		{"coap by ce-type", typed(schemas.TypeCoAP), ms(100), coap("1")},
		{"coap by ce-source", source(schemas.ProtocolCoAP), ms(100), coap("1")},
		{"coap, no estimate", typed(schemas.TypeCoAP), 0, coap("1")},
		{"coap, estimate rounded up", typed(schemas.TypeCoAP), 1001 * time.Millisecond, coap("2")},
		{"rpc by ce-type", typed(schemas.TypeRPC), ms(100), rpc},
		{"rpc by ce-source", source(schemas.ProtocolRPC), ms(100), rpc},
		{"raw", typed(schemas.TypeRaw), ms(100), nil},
		{"no headers", nil, ms(100), nil},
	}
	var o overload
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := o.header(tt.request, tt.est)
			if len(got) != len(tt.want) {
				t.Fatalf("header = %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if len(got[k]) != 1 || got[k][0] != v[0] {
					t.Errorf("header %s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
	// The CoAP header is built once per Max-Age.
	a, b := o.header(typed(schemas.TypeCoAP), ms(300)), o.header(typed(schemas.TypeCoAP), ms(400))
	if &a[schemas.HeaderCoAPCode][0] != &b[schemas.HeaderCoAPCode][0] {
		t.Error("a CoAP overload header built twice for the same Max-Age")
	}
}
