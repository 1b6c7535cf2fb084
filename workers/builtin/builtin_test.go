package builtin_test

import (
	"bytes"
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
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
	if got, want := builtin.Names(), []string{"coap", "echo", "places", "time"}; !slices.Equal(got, want) {
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

// coapRequest returns a CoAP request for method and path ("/a/b"), with
// Content-Format cf (-1 for none) and body as the payload.
func coapRequest(method, path string, cf int, body string) *workers.Request {
	var segs []string
	if path != "/" {
		segs = strings.Split(strings.TrimPrefix(path, "/"), "/")
	}
	return &workers.Request{
		Protocol: schemas.ProtocolCoAP,
		Body:     []byte(body),
		CoAP: &workers.CoAPRequest{
			Method: method, Path: path, Segments: segs, ContentFormat: cf, Accept: -1, Type: "CON",
		},
	}
}

func TestCoAPHandlers(t *testing.T) {
	now := time.Date(2026, 3, 4, 6, 7, 8, 9, time.FixedZone("CET", 3600))
	tests := []struct {
		name    string
		handler workers.Handler
		req     *workers.Request
		want    string
		header  nats.Header
	}{
		{
			name:    "time",
			handler: builtin.Time{Now: func() time.Time { return now }},
			req:     coapRequest("GET", "/time", -1, ""),
			want:    "2026-03-04T05:07:08Z",
			header:  nats.Header{schemas.HeaderCoAPContentFormat: {"0"}},
		},
		{
			name:    "time ignores a JSON call",
			handler: builtin.Time{Now: func() time.Time { return now }},
			req:     coapRequest("GET", "/time", 50, `[1,"time?"]`),
			want:    "2026-03-04T05:07:08Z",
			header:  nats.Header{schemas.HeaderCoAPContentFormat: {"0"}},
		},
		{
			name:    "echo with content-format",
			handler: builtin.Echo,
			req:     coapRequest("POST", "/echo", 50, `{"a":1}`),
			want:    `{"a":1}`,
			header:  nats.Header{schemas.HeaderCoAPContentFormat: {"50"}},
		},
		{
			name:    "echo without content-format",
			handler: builtin.Echo,
			req:     coapRequest("POST", "/echo", -1, "\x00\xff"),
			want:    "\x00\xff",
			header:  nats.Header{},
		},
		{
			name:    "mux hello",
			handler: builtin.CoAP(),
			req:     coapRequest("GET", "/hello", -1, ""),
			want:    "Hello from udpgate",
			header:  nats.Header{schemas.HeaderCoAPContentFormat: {"0"}},
		},
		{
			name:    "mux echo",
			handler: builtin.CoAP(),
			req:     coapRequest("POST", "/echo", 0, "ping"),
			want:    "ping",
			header:  nats.Header{schemas.HeaderCoAPContentFormat: {"0"}},
		},
		{
			name:    "mux empty echo",
			handler: builtin.CoAP(),
			req:     coapRequest("POST", "/echo", -1, ""),
			want:    "",
			header:  nats.Header{},
		},
		{
			name:    "mux unknown path",
			handler: builtin.CoAP(),
			req:     coapRequest("GET", "/nope", -1, ""),
			header:  nats.Header{schemas.HeaderCoAPCode: {"4.04"}},
		},
		{
			name:    "mux root",
			handler: builtin.CoAP(),
			req:     coapRequest("GET", "/", -1, ""),
			header:  nats.Header{schemas.HeaderCoAPCode: {"4.04"}},
		},
		{
			// The gateway answers discovery from every group's
			// announcement; the Mux only announces its links.
			name:    "mux leaves resource discovery to the gateway",
			handler: builtin.CoAP(),
			req:     coapRequest("GET", "/.well-known/core", -1, ""),
			header:  nats.Header{schemas.HeaderCoAPCode: {"4.04"}},
		},
		{
			name:    "mux other method",
			handler: builtin.CoAP(),
			req:     coapRequest("GET", "/echo", -1, "x"),
			header:  nats.Header{schemas.HeaderCoAPCode: {"4.05"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w recorder
			if err := tt.handler.Handle(context.Background(), &w, tt.req); err != nil {
				t.Fatalf("Handle = %v", err)
			}
			if got := w.body.String(); got != tt.want {
				t.Errorf("body = %q, want %q", got, tt.want)
			}
			if got := w.Header(); !reflect.DeepEqual(got, tt.header) {
				t.Errorf("header = %v, want %v", got, tt.header)
			}
		})
	}
}

func TestCoAPTimeNow(t *testing.T) {
	before := time.Now().Truncate(time.Second)
	var w recorder
	if err := builtin.CoAP().Handle(context.Background(), &w, coapRequest("GET", "/time", -1, "")); err != nil {
		t.Fatalf("Handle = %v", err)
	}
	after := time.Now()
	got, err := time.Parse(time.RFC3339, w.body.String())
	if err != nil || got.Before(before) || got.After(after) {
		t.Errorf("GET /time = %q, %v; want RFC 3339 between %v and %v", w.body.String(), err, before, after)
	}
}

func TestCoAPRawRequest(t *testing.T) {
	var w recorder
	if err := builtin.CoAP().Handle(context.Background(), &w, &workers.Request{Body: []byte("x")}); err == nil {
		t.Errorf("a raw request to the CoAP worker: no error, reply %v %q", w.header, w.body.String())
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct {
		name string
		want []string
	}{
		{"coap", []string{"udpgate.in.5683.GET.hello", "udpgate.in.5683.GET.time", "udpgate.in.5683.POST.echo"}},
		{"places", []string{"udpgate.in.5683.InterestingPlaces.GetRandom"}},
		{"echo", []string{"udpgate.in.5683"}},
		{"time", []string{"udpgate.in.5683"}},
		{"nope", nil},
	}
	for _, tt := range tests {
		if got := builtin.Subjects(tt.name, "udpgate", 5683); !slices.Equal(got, tt.want) {
			t.Errorf("Subjects(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
	for _, name := range builtin.Names() {
		for _, s := range builtin.Subjects(name, "udpgate", 5683) {
			if strings.ContainsAny(s, "*>") {
				t.Errorf("Subjects(%q) holds the catch-all %q", name, s)
			}
		}
	}
}
