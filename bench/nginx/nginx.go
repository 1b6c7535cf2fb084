// Package nginx runs nginx's stream module as a UDP proxy on loopback: the
// peer that udpgate bench suite's nginx-udp cases measure the gateway
// against, nginx being the UDP proxy most deployments already know.
//
// Start writes udp-proxy.conf (kept next to this file) into a temporary
// directory with the pid file and the error log, starts nginx in the
// foreground as a child process, and returns once a datagram sent through
// it has come back. Close stops it and removes the directory. Nothing of
// /etc/nginx is read, so a system nginx, running or not, is left alone.
package nginx

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"
)

//go:embed udp-proxy.conf
var confText string

// conf is udp-proxy.conf, filled in with a confData.
var conf = template.Must(template.New("udp-proxy.conf").Parse(confText))

// confData are the fields of udp-proxy.conf.
type confData struct {
	Module   string // the stream module to load, "" when nginx has it built in
	Dir      string // pid file and error log
	Workers  string
	Listen   string // 127.0.0.1:PORT
	Upstream string
	Timeout  string // proxy_timeout, in nginx's syntax (1500ms)
}

// ErrNotFound is returned by Find and Start when there is no nginx
// binary.
var ErrNotFound = errors.New("nginx: not found on PATH or as /usr/sbin/nginx")

// ErrNoStream is returned by Start when nginx lacks the stream module.
var ErrNoStream = errors.New("nginx: no stream module (Debian: apt-get install libnginx-mod-stream)")

// Find returns the path of the nginx binary: nginx on PATH, else Debian's
// /usr/sbin/nginx, which is not on a normal user's PATH.
func Find() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	const sbin = "/usr/sbin/nginx"
	if fi, err := os.Stat(sbin); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return sbin, nil
	}
	return "", ErrNotFound
}

// build is what nginx -V says of a binary.
type build struct {
	// module is the stream module to load: "" if it is built in, the
	// .so's path if it is dynamic (Debian's packages).
	module string
	// startLog is whether nginx takes -e, the error log before the
	// configuration is read (1.19.5 and later).
	startLog bool
}

// inspect runs bin -V and returns its build, or ErrNoStream.
func inspect(bin string) (build, error) {
	// nginx -V prints its version and configure arguments on standard
	// error.
	out, err := exec.Command(bin, "-V").CombinedOutput()
	if err != nil {
		return build{}, fmt.Errorf("nginx: %s -V: %w: %s", bin, err, bytes.TrimSpace(out))
	}
	var b build
	modules := "/usr/lib/nginx/modules"
	dynamic, static := false, false
	for _, arg := range strings.Fields(string(out)) {
		switch {
		case arg == "--with-stream":
			static = true
		case arg == "--with-stream=dynamic":
			dynamic = true
		case strings.HasPrefix(arg, "--modules-path="):
			modules = strings.TrimPrefix(arg, "--modules-path=")
		case strings.HasPrefix(arg, "nginx/"):
			b.startLog = atLeast(strings.TrimPrefix(arg, "nginx/"), 1, 19, 5)
		}
	}
	switch {
	case static:
		return b, nil
	case dynamic:
		b.module = filepath.Join(modules, "ngx_stream_module.so")
		if _, err := os.Stat(b.module); err != nil {
			return build{}, fmt.Errorf("%w: %s is missing", ErrNoStream, b.module)
		}
		return b, nil
	}
	return build{}, ErrNoStream
}

// atLeast reports whether version (1.22.1) is at least major.minor.patch.
func atLeast(version string, want ...int) bool {
	parts := strings.SplitN(version, ".", 3)
	for i, w := range want {
		if i >= len(parts) {
			return false
		}
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return false
		}
		if n != w {
			return n > w
		}
	}
	return true
}

// Config describes a proxy. Only Upstream is required.
type Config struct {
	// Upstream is where nginx sends each datagram. It must answer every
	// datagram (an echo): Start waits for one answer.
	Upstream netip.AddrPort
	// Workers is nginx's worker_processes: a number or "auto" (the
	// default: one per core).
	Workers string
	// Timeout is nginx's proxy_timeout: how long a session waits for the
	// upstream's answer. One second if zero.
	Timeout time.Duration
	// Binary is the nginx to run; Find's if empty.
	Binary string
}

// Proxy is a running nginx. Its methods are safe for concurrent use.
type Proxy struct {
	// Addr is the loopback address nginx listens on.
	Addr netip.AddrPort

	dir    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	once   sync.Once
	err    error // of Close, set once
}

// startAttempts bounds the ports Start tries: another process may take a
// free port between the moment Start finds it and nginx's bind.
const startAttempts = 4

// readyTimeout bounds how long Start waits for the first answer.
const readyTimeout = 10 * time.Second

// Start starts nginx proxying UDP from a free loopback port to
// c.Upstream, and returns once a datagram has come back through it (or
// ctx ends). The caller must Close the Proxy.
func Start(ctx context.Context, c Config) (*Proxy, error) {
	bin := c.Binary
	if bin == "" {
		var err error
		if bin, err = Find(); err != nil {
			return nil, err
		}
	}
	b, err := inspect(bin)
	if err != nil {
		return nil, err
	}
	if c.Workers == "" {
		c.Workers = "auto"
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	dir, err := os.MkdirTemp("", "udpgate-nginx-")
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	var errs []error
	for range startAttempts {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("nginx: %w", err)
		}
		p, err := start(ctx, bin, b.startLog, dir, confData{
			Module: b.module, Dir: dir, Workers: c.Workers,
			Listen:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String(),
			Upstream: c.Upstream.String(), Timeout: fmt.Sprintf("%dms", c.Timeout.Milliseconds()),
		})
		if err == nil {
			return p, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, errPortTaken) || ctx.Err() != nil {
			break
		}
	}
	os.RemoveAll(dir)
	return nil, errors.Join(errs...)
}

// errExited marks a start in which nginx exited before it answered;
// errPortTaken one in which it could not bind its port, which another
// process took after freePort found it free: worth another port.
var (
	errExited    = errors.New("nginx exited")
	errPortTaken = errors.New("port taken")
)

// start runs nginx once with data and waits for its first answer. On
// failure it leaves nothing running, and dir in place.
func start(ctx context.Context, bin string, startLog bool, dir string, data confData) (*Proxy, error) {
	var b bytes.Buffer
	if err := conf.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("nginx: udp-proxy.conf: %w", err)
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	errorLog := filepath.Join(dir, "error.log")
	os.Remove(errorLog) // keep only this attempt's
	args := []string{"-p", dir + "/", "-c", path}
	if startLog {
		// The error log until the configuration is read; without -e,
		// nginx opens its compiled-in one (and complains when it may not).
		args = append(args, "-e", errorLog)
	}
	// Standard output and error go to /dev/null: nginx writes what it
	// says there to the error log too.
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	p := &Proxy{Addr: netip.MustParseAddrPort(data.Listen), dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitAnswer(ctx); err != nil {
		p.stop()
		log, _ := os.ReadFile(errorLog)
		if errors.Is(err, errExited) && bytes.Contains(log, []byte("Address already in use")) {
			err = fmt.Errorf("%w (%w)", err, errPortTaken)
		}
		return nil, fmt.Errorf("nginx on %s: %w; error log: %s", p.Addr, err, bytes.TrimSpace(log))
	}
	return p, nil
}

// waitAnswer sends a datagram through the proxy every 50 ms until one
// comes back, nginx exits, ctx ends or readyTimeout passes.
func (p *Proxy) waitAnswer(ctx context.Context) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr))
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	probe := []byte("udpgate bench: nginx ready?")
	buf := make([]byte, 512)
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("%w: %v", errExited, p.cmd.ProcessState)
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// Until nginx binds, the write may fail (ICMP port unreachable
		// of the previous probe); read errors likewise mean "not yet".
		c.Write(probe)
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && bytes.Equal(buf[:n], probe) {
			return nil
		}
	}
	return fmt.Errorf("no answer within %s", readyTimeout)
}

// freePort returns a loopback UDP port that was free a moment ago. Tests
// replace it.
var freePort = func() (uint16, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
}

// stopWait is how long Close waits for nginx to exit after asking it to.
const stopWait = 5 * time.Second

// stop asks nginx to exit (SIGTERM: its fast shutdown, which stops the
// workers too) and waits; after stopWait it kills nginx's process group.
func (p *Proxy) stop() {
	terminate(p.cmd.Process)
	select {
	case <-p.exited:
		return
	case <-time.After(stopWait):
	}
	kill(p.cmd.Process)
	<-p.exited
}

// Close stops nginx and removes its directory. It is idempotent.
func (p *Proxy) Close() error {
	p.once.Do(func() {
		p.stop()
		p.err = os.RemoveAll(p.dir)
	})
	return p.err
}

// Log returns nginx's error log so far.
func (p *Proxy) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
	return string(b)
}
