package builtin_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// recorder is a workers.ResponseWriter that keeps what is written.
type recorder struct {
	header nats.Header
	body   bytes.Buffer
}

func (w *recorder) Header() nats.Header {
	if w.header == nil {
		w.header = nats.Header{}
	}
	return w.header
}

func (w *recorder) Write(p []byte) (int, error) { return w.body.Write(p) }

// handle runs h on a request with body and returns the reply body.
func handle(t *testing.T, h workers.Handler, body string) string {
	t.Helper()
	var w recorder
	if err := h.Handle(context.Background(), &w, &workers.Request{Body: []byte(body)}); err != nil {
		t.Fatalf("Handle(%q) = %v", body, err)
	}
	if len(w.header) != 0 {
		t.Errorf("Handle(%q) set headers %v, want none", body, w.header)
	}
	return w.body.String()
}

func TestEcho(t *testing.T) {
	for _, body := range []string{"", "ping", "\x00\xff binary", `["json"]`} {
		if got := handle(t, builtin.Echo, body); got != body {
			t.Errorf("Echo(%q) = %q", body, got)
		}
	}
}

func TestTime(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	now := time.Date(2026, 3, 4, 6, 7, 8, 999_999_999, paris)
	const (
		stamp = "2026-03-04T05:07:08Z"
		text  = `"The time is ` + stamp + `"`
	)
	tests := []struct {
		name, body, want string
	}{
		{"number id", `[1,"what time is it"]`, `[1,` + text + `]`},
		{"string id", `["abc",null]`, `["abc",` + text + `]`},
		{"escaped id kept", `["\u00e9\n",0]`, `["\u00e9\n",` + text + `]`},
		{"nested id", `[{"a":[1,{"b":null}]},{}]`, `[{"a":[1,{"b":null}]},` + text + `]`},
		{"spaces inside id kept", ` [ {"a": [1, 2]} , "x" ] `, `[{"a": [1, 2]},` + text + `]`},
		{"big number id", `[123456789012345678901234567890,0]`, `[123456789012345678901234567890,` + text + `]`},
		{"null id", `[null,1]`, `[null,` + text + `]`},
		{"empty body", ``, stamp},
		{"plain text", `what time is it`, stamp},
		{"invalid JSON", `[1,`, stamp},
		{"trailing garbage", `[1,2]x`, stamp},
		{"empty array", `[]`, stamp},
		{"one element", `[1]`, stamp},
		{"three elements", `[1,2,3]`, stamp},
		{"object", `{"id":1}`, stamp},
		{"string", `"[1,2]"`, stamp},
		{"null", `null`, stamp},
	}
	h := builtin.Time{Now: func() time.Time { return now }}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := handle(t, h, tt.body); got != tt.want {
				t.Errorf("Time(%q) = %q, want %q", tt.body, got, tt.want)
			}
		})
	}
}

func TestTimeZeroValue(t *testing.T) {
	before := time.Now().Truncate(time.Second)
	got, err := time.Parse(time.RFC3339, handle(t, builtin.Time{}, ""))
	after := time.Now()
	if err != nil {
		t.Fatalf("reply not RFC 3339: %v", err)
	}
	if got.Before(before) || got.After(after) || got.Location() != time.UTC {
		t.Errorf("time = %v, want UTC between %v and %v", got, before, after)
	}
}

func TestLookup(t *testing.T) {
	if got, want := builtin.Names(), []string{"echo", "time"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	for _, name := range builtin.Names() {
		if h, ok := builtin.Lookup(name); !ok || h == nil {
			t.Errorf("Lookup(%q) = %v, %v", name, h, ok)
		}
	}
	if h, ok := builtin.Lookup("nope"); ok || h != nil {
		t.Errorf(`Lookup("nope") = %v, %v; want nil, false`, h, ok)
	}
	if got := handle(t, mustLookup(t, "echo"), "hi"); got != "hi" {
		t.Errorf(`Lookup("echo") answers %q, want "hi"`, got)
	}
}

func mustLookup(t *testing.T, name string) workers.Handler {
	t.Helper()
	h, ok := builtin.Lookup(name)
	if !ok {
		t.Fatalf("Lookup(%q) not found", name)
	}
	return h
}
