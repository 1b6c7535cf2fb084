package nginx

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/bench"
)

// needNginx skips the test without nginx, unless CI is set: CI installs it.
func needNginx(t *testing.T) {
	t.Helper()
	if _, err := Find(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v (CI installs nginx and libnginx-mod-stream)", err)
		}
		t.Skip(err)
	}
}

// echo runs bench.Echo on loopback until the test ends.
func echo(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&bench.Echo{Conn: c}).Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestProxy(t *testing.T) {
	needNginx(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, Config{Upstream: echo(t), Workers: "1"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for i := range 20 {
		msg := []byte(strings.Repeat("x", i+1))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("datagram %d: %q, %v", i, buf[:n], err)
		}
	}
	pid := p.cmd.Process.Pid
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(p.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", p.dir, err)
	}
	// The process group is gone: master and workers.
	if err := signalGroup(pid); err == nil {
		t.Errorf("nginx's process group %d still exists", pid)
	}
}

func TestLoad(t *testing.T) {
	needNginx(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, Config{Upstream: echo(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	res, err := bench.Run(ctx, bench.Config{Target: "udp://" + p.Addr.String(), Concurrency: 8, Count: 2000, Payload: []byte("0123456789")})
	if err != nil {
		t.Fatal(err)
	}
	if res.Answered < res.Sent*99/100 || res.Sent != 2000 {
		t.Errorf("sent %d, answered %d, lost %d; error log:\n%s", res.Sent, res.Answered, res.Lost, p.Log())
	}
}

func TestStartFails(t *testing.T) {
	needNginx(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// An invalid worker count: nginx refuses the configuration and exits;
	// Start retries, then reports nginx's own words.
	_, err := Start(ctx, Config{Upstream: echo(t), Workers: "none"})
	if err == nil || !errors.Is(err, errExited) || !strings.Contains(err.Error(), "worker_processes") {
		t.Errorf("err %v, want nginx's complaint about worker_processes", err)
	}
	if errors.Is(err, errPortTaken) {
		t.Errorf("err %v: not a port taken", err)
	}
	if _, err := Start(ctx, Config{Upstream: echo(t), Binary: "/nonexistent/nginx"}); err == nil {
		t.Error("no error for a missing binary")
	}
}

// TestStartRetries gives nginx a port another socket holds first: Start
// tries another.
func TestStartRetries(t *testing.T) {
	needNginx(t)
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	real := freePort
	defer func() { freePort = real }()
	calls := 0
	freePort = func() (uint16, error) {
		calls++
		if calls == 1 {
			return taken.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
		}
		return real()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, Config{Upstream: echo(t), Workers: "1"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if calls != 2 || p.Addr.Port() == taken.LocalAddr().(*net.UDPAddr).AddrPort().Port() {
		t.Errorf("%d ports tried, listening on %s", calls, p.Addr)
	}
}

func TestAtLeast(t *testing.T) {
	for _, tt := range []struct {
		version string
		want    bool
	}{
		{"1.22.1", true}, {"1.19.5", true}, {"1.19.4", false}, {"1.18.0", false},
		{"1.20", true}, {"1.19", false}, {"2.0.0", true}, {"1.x.0", false},
	} {
		if got := atLeast(tt.version, 1, 19, 5); got != tt.want {
			t.Errorf("atLeast(%q, 1.19.5) = %v, want %v", tt.version, got, tt.want)
		}
	}
}
