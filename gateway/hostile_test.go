package gateway

import (
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/schemas"
)

// coapPath builds a CON GET with the given Uri-Path segments (each up to
// 255 bytes) and message id.
func coapPath(mid uint16, segs ...string) []byte {
	b := []byte{0x40, 0x01, byte(mid >> 8), byte(mid)}
	prev := 0
	for _, s := range segs {
		delta := 11 - prev
		prev = 11
		switch {
		case len(s) < 13:
			b = append(b, byte(delta<<4|len(s)))
		default:
			b = append(b, byte(delta<<4|13), byte(len(s)-13))
		}
		b = append(b, s...)
	}
	return b
}

// TestCoAPHostilePaths: client bytes never reach a subject unescaped, and
// a path whose subject would be too long for NATS is refused without
// harming the gateway's connection.
func TestCoAPHostilePaths(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(time.Second)}
	addr, s, seen := coapGateway(t, g, 0)
	r := dialRaw(t, addr)
	// An observer group records what workers see: subject and path header.
	observed := make(chan *nats.Msg, 16)
	contractWorker(t, s, "observer", "udpgate.in.>", func(m *nats.Msg) []byte {
		observed <- m
		return nil
	})

	// 30 segments of 200 dots: 6 KB of datagram, 18 KB of escaped subject.
	var long []string
	for range 30 {
		long = append(long, strings.Repeat(".", 200))
	}
	r.send(coapPath(0x7001, long...))
	resp := r.read(2 * time.Second)
	if len(resp) < 4 || resp[1]>>5 != 4 {
		t.Errorf("a path too long for a subject got % x, want a 4.xx", resp)
	}
	if !g.NATS.IsConnected() {
		t.Fatal("the gateway's NATS connection did not survive a long path")
	}
	// The gateway still works.
	r.send(con(0x7002, 0, "time"))
	if resp := r.read(5 * time.Second); len(resp) < 4 || resp[1] != byte(codes.Content) {
		t.Fatalf("after a long path: % x, want 2.05", resp)
	}
	before := seen.Load()
	for i, segs := range [][]string{
		{"$JS", "API", "STREAM", "DELETE", "UDPGATE_IN"},
		{"a.b", "*", ">"},
		{"\xff\xfe", "", " "},
	} {
		r.send(coapPath(0x7100+uint16(i), segs...))
		resp := r.read(5 * time.Second)
		if len(resp) < 4 || resp[1] != byte(codes.NotFound) {
			t.Errorf("%q: % x, want the worker's 4.04", segs, resp)
		}
	}
	if n := seen.Load() - before; n != 3 {
		t.Errorf("the worker saw %d hostile requests, want 3", n)
	}
	port := strings.TrimPrefix(addr[strings.LastIndex(addr, ":"):], ":")
	want := map[string]string{ // subject -> the path the worker sees
		"udpgate.in." + port + ".GET.~24JS.API.STREAM.DELETE.UDPGATE_IN": "/$JS/API/STREAM/DELETE/UDPGATE_IN",
		"udpgate.in." + port + ".GET.a~2Eb.~2A.~3E":                      "/a.b/%2A/%3E",
		"udpgate.in." + port + ".GET.~FF~FE.~.~20":                       "/%FF%FE//%20",
	}
	deadline := time.After(5 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-observed:
			if strings.HasSuffix(m.Subject, ".time") {
				continue
			}
			path, ok := want[m.Subject]
			if !ok {
				t.Errorf("unexpected subject %q", m.Subject)
				continue
			}
			if got := m.Header.Get(schemas.HeaderCoAPRequest); got != "GET "+path {
				t.Errorf("%s: request line %q, want %q", m.Subject, got, "GET "+path)
			}
			delete(want, m.Subject)
		case <-deadline:
			t.Fatalf("the observer did not see: %v", want)
		}
	}
}

// TestCoAPHeadersBounded: header values made from client bytes are bounded
// by the datagram: a CoAP request of nearly UDPGATE_MAX_DATAGRAM bytes of
// Uri-Query options that all need escaping reaches the worker intact, its
// headers stay within a few times the datagram, and the gateway's NATS
// connection survives.
func TestCoAPHeadersBounded(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(time.Second)}
	addr, s, _ := coapGateway(t, g, 0)
	r := dialRaw(t, addr)
	observed := make(chan *nats.Msg, 4)
	contractWorker(t, s, "observer", "udpgate.in.>", func(m *nats.Msg) []byte {
		observed <- m
		return nil
	})

	req := con(0x7200, 0, "time") // Uri-Path "time": option 11
	var query []string
	for i := range 31 {
		q := strings.Repeat("\xff", 255)
		query = append(query, q)
		delta := byte(15 - 11) // Uri-Query is option 15
		if i > 0 {
			delta = 0
		}
		req = append(req, delta<<4|13, byte(len(q)-13))
		req = append(req, q...)
	}
	if len(req) > 8192 {
		t.Fatalf("request of %d bytes, over the default maximum", len(req))
	}
	r.send(req)
	if resp := r.read(5 * time.Second); len(resp) < 4 || resp[1] != byte(codes.Content) {
		t.Fatalf("% x, want 2.05", resp[:min(len(resp), 8)])
	}
	var m *nats.Msg
	for m == nil {
		select {
		case got := <-observed:
			if strings.HasPrefix(got.Header.Get(schemas.HeaderCoAPRequest), "GET /time?") {
				m = got
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the observer did not see the request")
		}
	}
	size := 0
	for k, vs := range m.Header {
		for _, v := range vs {
			size += len(k) + len(v)
		}
	}
	if limit := 5*len(req) + 2048; size > limit { // percent-encoding 3x, plus the head in base64 4/3x
		t.Errorf("%d bytes of headers for a %d-byte datagram, over %d", size, len(req), limit)
	}
	var got []string
	_, line, _ := strings.Cut(m.Header.Get(schemas.HeaderCoAPRequest), "?")
	for _, q := range strings.Split(line, "&") {
		u, err := url.PathUnescape(q)
		if err != nil {
			t.Fatalf("query %q: %v", q, err)
		}
		got = append(got, u)
	}
	if !slices.Equal(got, query) {
		t.Errorf("the worker saw %d query options, not the %d sent intact", len(got), len(query))
	}
	if !g.NATS.IsConnected() {
		t.Fatal("the gateway's NATS connection did not survive")
	}
}
