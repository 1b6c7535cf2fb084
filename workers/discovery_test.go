package workers_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

func TestMuxDiscovery(t *testing.T) {
	m := workers.NewMux()
	ok := patternHandler()
	m.Route("GET /time", ok)
	m.Route("POST /echo", ok)
	m.Route("PUT /echo", ok) // one path, two patterns: one link
	m.Route("GET /sensors/{id}", ok)
	m.Route("GET /files/{path...}", ok)
	m.Route("/a%20b/c", ok)
	m.Route("GET "+workers.WellKnownCore, m.Discovery(workers.Links{
		"/time":      `rt="time clock";ct=0`,
		"/sensors/1": `rt="temperature";if="sensor";ct=50`,
	}))
	m.Route("GET /", ok) // registered after Discovery: listed all the same

	tests := []struct {
		name, query, want string
	}{
		{"all", "", `</>,</a%20b/c>,</echo>,</sensors/1>;rt="temperature";if="sensor";ct=50,</time>;rt="time clock";ct=0`},
		{"href", "href=/echo", `</echo>`},
		{"href prefix", "href=/s*", `</sensors/1>;rt="temperature";if="sensor";ct=50`},
		{"attribute", "ct=0", `</time>;rt="time clock";ct=0`},
		{"one of a list", "rt=clock", `</time>;rt="time clock";ct=0`},
		{"quoted attribute prefix", "if=sen*", `</sensors/1>;rt="temperature";if="sensor";ct=50`},
		{"star alone", "rt=*", `</sensors/1>;rt="temperature";if="sensor";ct=50,</time>;rt="time clock";ct=0`},
		{"no match", "rt=humidity", string(workers.NotFound)},
		{"no such attribute", "sz=*", string(workers.NotFound)},
		{"not a filter", "verbose", `</>,</a%20b/c>,</echo>,</sensors/1>;rt="temperature";if="sensor";ct=50,</time>;rt="time clock";ct=0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := coapRequest("GET", ".well-known", "core")
			if tt.query != "" {
				r.CoAP.Query = []string{tt.query}
			}
			var w recorder
			if err := m.Handle(context.Background(), &w, r); err != nil {
				t.Fatal(err)
			}
			got := w.body.String()
			if code := w.Header().Get(schemas.HeaderCoAPCode); code != "" {
				got = code
			} else if cf := w.Header().Get(schemas.HeaderCoAPContentFormat); cf != "40" {
				t.Errorf("Content-Format %q, want 40 (application/link-format)", cf)
			}
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// FuzzMuxDiscovery feeds discovery arbitrary queries, as clients send them:
// it never panics, and answers either links or 4.04.
func FuzzMuxDiscovery(f *testing.F) {
	for _, q := range []string{"", "href=/t*", "rt=*", "rt=", "=", "*", `rt="`, "ct=0", "href=", "a=b=c", "if=\x00\xff"} {
		f.Add(q)
	}
	m := workers.NewMux()
	m.Route("GET /time", patternHandler())
	m.Route("GET /sensors/{id}", patternHandler())
	m.Route("GET "+workers.WellKnownCore, m.Discovery(workers.Links{
		"/time": `rt="time clock";ct=0`, "/sensors/1": `rt="x;if=`, "/odd": `;;=;"`,
	}))
	f.Fuzz(func(t *testing.T, query string) {
		r := coapRequest("GET", ".well-known", "core")
		r.CoAP.Query = []string{query}
		var w recorder
		if err := m.Handle(context.Background(), &w, r); err != nil {
			t.Fatal(err)
		}
		switch code := w.Header().Get(schemas.HeaderCoAPCode); {
		case code == string(workers.NotFound) && w.body.Len() == 0:
		case code == "" && w.Header().Get(schemas.HeaderCoAPContentFormat) == "40" && bytes.HasPrefix(w.body.Bytes(), []byte("</")):
		default:
			t.Fatalf("query %q: code %q, content-format %q, body %q", query, code, w.Header().Get(schemas.HeaderCoAPContentFormat), w.body.String())
		}
	})
}
