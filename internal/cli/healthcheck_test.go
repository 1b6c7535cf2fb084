package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/observe"
)

// healthServer serves a real observe.Server on a free loopback port until
// the test ends, whose one readiness check fails while ready is false. It
// returns the server's base URL and host:port.
func healthServer(t *testing.T, ready *atomic.Bool) (base, hostPort string) {
	t.Helper()
	s := &observe.Server{Registry: prometheus.NewRegistry()}
	s.AddCheck("nats", func(context.Context) error {
		if !ready.Load() {
			return errors.New("not connected")
		}
		return nil
	})
	ln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return observe.URL(ln), ln.Addr().String()
}

func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	base, hostPort := healthServer(t, &ready)
	_, port, _ := net.SplitHostPort(hostPort)

	// A server that answers nothing within the timeout.
	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stall:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(stall) })

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		name   string
		listen string // UDPGATE_HTTP_LISTEN
		ready  bool
		args   []string
		code   int
		stdout string // exactly, on success
		err    string // in the error, on failure
	}{
		{name: "ready", ready: true, args: []string{"-url", base}, code: 0, stdout: "ready\n"},
		{name: "not ready", args: []string{"-url", base}, code: 1, err: "503 Service Unavailable: not ready: nats: not connected"},
		{name: "alive while not ready", args: []string{"-url", base, "-path", "/healthz"}, code: 0, stdout: "ok\n"},
		{name: "url without scheme", ready: true, args: []string{"--url", hostPort}, code: 0, stdout: "ready\n"},
		{name: "url from UDPGATE_HTTP_LISTEN", listen: "0.0.0.0:" + port, ready: true, code: 0, stdout: "ready\n"},
		{name: "not ready from UDPGATE_HTTP_LISTEN", listen: ":" + port, code: 1, err: "/readyz: 503"},
		{name: "nothing listening", args: []string{"-url", closed}, code: 1, err: "connection refused"},
		{name: "no answer in time", args: []string{"-url", slow.URL, "-timeout", "200ms"}, code: 1, err: "did not answer within 200ms"},
		{name: "no HTTP endpoint", listen: " ", code: 1, err: "UDPGATE_HTTP_LISTEN is empty"},
		{name: "a free port", listen: "127.0.0.1:0", code: 1, err: "picked a free port"},
		{name: "not a path", args: []string{"-url", base, "-path", "readyz"}, code: 2},
		{name: "not a URL", args: []string{"-url", "ftp://127.0.0.1/"}, code: 1, err: "not an http:// URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := tc.listen
			if listen == "" {
				listen = "auto"
			}
			t.Setenv("UDPGATE_HTTP_LISTEN", listen)
			ready.Store(tc.ready)
			var out, errb strings.Builder
			err := Run(context.Background(), append([]string{"healthcheck"}, tc.args...), &out, &errb)
			if code := exitCode(err); code != tc.code {
				t.Fatalf("exit %d (%v), want %d; stderr %q", code, err, tc.code, errb.String())
			}
			if tc.code == 0 && out.String() != tc.stdout {
				t.Errorf("printed %q, want %q", out.String(), tc.stdout)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}
