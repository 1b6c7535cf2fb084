package gateway

import (
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
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
	observed := make(chan jetstream.Msg, 16)
	contractWorker(t, s, "observer", "udpgate.in.>", func(m jetstream.Msg) []byte {
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
			if strings.HasSuffix(m.Subject(), ".time") {
				continue
			}
			path, ok := want[m.Subject()]
			if !ok {
				t.Errorf("unexpected subject %q", m.Subject())
				continue
			}
			if got := m.Headers().Get(schemas.HeaderCoAPPath); got != path {
				t.Errorf("%s: path header %q, want %q", m.Subject(), got, path)
			}
			delete(want, m.Subject())
		case <-deadline:
			t.Fatalf("the observer did not see: %v", want)
		}
	}
}
