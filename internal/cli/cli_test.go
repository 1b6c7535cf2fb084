package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

func freeTCPPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func freeUDPPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// freeUDPPorts returns n distinct free UDP ports: each is held until all
// are chosen, so that the kernel cannot hand one out twice.
func freeUDPPorts(t *testing.T, n int) []uint16 {
	t.Helper()
	ports := make([]uint16, n)
	for i := range ports {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ports[i] = uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	return ports
}

func TestGatewayFailsClearlyWithoutNATS(t *testing.T) {
	url := "nats://user:secret@127.0.0.1:" + strconv.Itoa(int(freeTCPPort(t)))
	t.Setenv("UDPGATE_NATS_URL", url)
	t.Setenv("UDPGATE_LISTENERS", "127.0.0.1:"+strconv.Itoa(int(freeUDPPort(t)))+"/raw")
	t.Setenv("UDPGATE_HTTP_LISTEN", "127.0.0.1:0") // never the fixed default port
	var out, errb bytes.Buffer
	err := Run(context.Background(), []string{"gateway"}, &out, &errb)
	if err == nil {
		t.Fatal("gateway started without NATS")
	}
	redacted := strings.Replace(url, "secret", "xxxxx", 1)
	if !strings.Contains(err.Error(), "cannot connect to NATS at "+redacted) {
		t.Errorf("error %q does not name the URL %s", err, redacted)
	}
	if strings.Contains(err.Error()+out.String()+errb.String(), "secret") {
		t.Errorf("the password was printed: %q", err)
	}
}

// udpResponder serves UDP on 127.0.0.1 until the test ends, calling answer
// for the n-th datagram (from 1) with the socket it came in on and a second
// socket on another port. It returns the first socket's address.
func udpResponder(t *testing.T, answer func(n int, req []byte, from netip.AddrPort, srv, other *net.UDPConn)) string {
	t.Helper()
	var socks [2]*net.UDPConn
	for i := range socks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		socks[i] = c
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for n := 1; ; n++ {
			m, from, err := socks[0].ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			answer(n, buf[:m], from, socks[0], socks[1])
		}
	}()
	t.Cleanup(func() {
		socks[0].Close()
		<-done
	})
	return socks[0].LocalAddr().String()
}

func TestSend(t *testing.T) {
	var otherPort atomic.Int32 // the port the "other port" responder answers from
	tests := []struct {
		name     string
		args     []string // before the URL
		payload  []string // after it; none: standard input
		answer   func(n int, req []byte, from netip.AddrPort, srv, other *net.UDPConn)
		exit     int
		stdout   string
		stderr   []string
		errorMsg string
	}{
		{
			name:    "one reply",
			payload: []string{"ping"},
			answer: func(_ int, req []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
				if string(req) == "ping" {
					srv.WriteToUDPAddrPort([]byte("pong"), from)
				}
			},
			stdout: "pong\n",
		},
		{
			name:    "verbose",
			args:    []string{"-v"},
			payload: []string{"ping"},
			answer: func(_ int, _ []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
				srv.WriteToUDPAddrPort([]byte("pong\n"), from)
			},
			stdout: "pong\n",
			stderr: []string{"reply from 127.0.0.1:", " after 1 try\n"},
		},
		{
			name:    "answer to the third copy",
			args:    []string{"-wait", "50ms", "-timeout", "10s"},
			payload: []string{"hello"},
			answer: func(n int, req []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
				if n == 3 {
					srv.WriteToUDPAddrPort(req, from)
				}
			},
			stdout: "hello\n",
			stderr: []string{"reply from 127.0.0.1:", " after 3 tries\n"},
		},
		{
			name:    "binary reply",
			payload: []string{"x"},
			answer: func(_ int, _ []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
				srv.WriteToUDPAddrPort([]byte{0, 0xff, 0xfe}, from)
			},
			stdout: "\x00\xff\xfe",
		},
		{
			name:    "request id mismatch",
			args:    []string{"-wait", "50ms", "-timeout", "10s"},
			payload: []string{`[7, "what time is it?"]`},
			answer: func(n int, _ []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
				reply := `[9,"The time is never"]`
				if n > 1 {
					reply = `[7,"The time is now"]`
				}
				srv.WriteToUDPAddrPort([]byte(reply), from)
			},
			stdout: `[7,"The time is now"]` + "\n",
			stderr: []string{"rejected reply from 127.0.0.1:", ": reply id 9 does not match request id 7\n", " after 2 tries"},
		},
		{
			name:    "reply from another port",
			args:    []string{"-wait", "50ms", "-timeout", "300ms"},
			payload: []string{"hi"},
			answer: func(_ int, _ []byte, from netip.AddrPort, _, other *net.UDPConn) {
				otherPort.Store(int32(other.LocalAddr().(*net.UDPAddr).Port))
				other.WriteToUDPAddrPort([]byte("from elsewhere"), from)
			},
			exit:     1,
			stderr:   []string{"rejected reply from 127.0.0.1:", ": not the address the request was sent to\n"},
			errorMsg: "no reply from",
		},
		{
			name:     "silence",
			args:     []string{"-timeout", "100ms"},
			payload:  []string{"silence"},
			answer:   func(int, []byte, netip.AddrPort, *net.UDPConn, *net.UDPConn) {},
			exit:     1,
			errorMsg: "no reply from",
		},
		{name: "bad flag", args: []string{"-count", "0"}, payload: []string{"x"}, exit: 2},
		{name: "unknown flag", args: []string{"-nope"}, payload: []string{"x"}, exit: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := "udp://127.0.0.1:1"
			if tt.answer != nil {
				url = "udp://" + udpResponder(t, tt.answer)
			}
			var out, errb bytes.Buffer
			args := append(append(append([]string{"send"}, tt.args...), url), tt.payload...)
			err := Run(context.Background(), args, &out, &errb)
			if tt.exit == 0 && err != nil {
				t.Fatalf("send: %v (%s)", err, errb.String())
			}
			if tt.exit != 0 && (err == nil || exitCode(err) != tt.exit) {
				t.Fatalf("send: err %v, exit %d, want %d (%s)", err, exitCode(err), tt.exit, errb.String())
			}
			if tt.errorMsg != "" && !strings.Contains(err.Error(), tt.errorMsg) {
				t.Errorf("error %q does not say %q", err, tt.errorMsg)
			}
			if tt.exit != 2 && out.String() != tt.stdout {
				t.Errorf("stdout %q, want %q", out.String(), tt.stdout)
			}
			for _, want := range tt.stderr {
				if !strings.Contains(errb.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, errb.String())
				}
			}
			if p := strconv.Itoa(int(otherPort.Load())); tt.name == "reply from another port" && !strings.Contains(errb.String(), "127.0.0.1:"+p+": not the address") {
				t.Errorf("stderr does not name port %s:\n%s", p, errb.String())
			}
		})
	}
	for _, url := range []string{"tcp://x:1", "udp://127.0.0.1", "rpc://127.0.0.1:1/NoMethod"} {
		var out, errb bytes.Buffer
		if err := Run(context.Background(), []string{"send", url, "a"}, &out, &errb); exitCode(err) != 2 {
			t.Errorf("send %s: err %v, exit %d, want 2", url, err, exitCode(err))
		}
	}
}

func TestSendRPC(t *testing.T) {
	addr := udpResponder(t, func(_ int, req []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
		var call rpcpb.Call
		var params placespb.GetRandomRequest
		if proto.Unmarshal(req, &call) != nil || proto.Unmarshal(call.Params, &params) != nil {
			return
		}
		reply := &rpcpb.Reply{Id: call.Id}
		if params.Limit < 1 {
			reply.Status, reply.Error = rpcpb.Status_STATUS_INVALID_ARGUMENT, "limit must be at least 1"
		} else {
			reply.Body, _ = proto.Marshal(&placespb.GetRandomResponse{Places: []*placespb.Place{{Name: "Mont Saint-Michel"}}})
		}
		b, _ := proto.Marshal(reply)
		srv.WriteToUDPAddrPort(b, from)
	})
	url := "rpc://" + addr + "/InterestingPlaces/GetRandom"
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"send", url, `{"limit": 1}`}, &out, &errb); err != nil {
		t.Fatalf("send: %v (%s)", err, errb.String())
	}
	var got placespb.GetRandomResponse
	if err := protojson.Unmarshal(out.Bytes(), &got); err != nil || len(got.Places) != 1 || got.Places[0].Name != "Mont Saint-Michel" {
		t.Errorf("printed %q (%v), want the response as JSON", out.String(), err)
	}
	out.Reset()
	err := Run(context.Background(), []string{"send", url, `{"limit": 0}`}, &out, &errb)
	if exitCode(err) != 1 || err.Error() != "rpc: STATUS_INVALID_ARGUMENT: limit must be at least 1" || out.Len() != 0 {
		t.Errorf("error %v, exit %d, stdout %q", err, exitCode(err), out.String())
	}
}

func TestSendCount(t *testing.T) {
	echo := udpResponder(t, func(_ int, req []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
		srv.WriteToUDPAddrPort(req, from)
	})
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"send", "-count", "100", "udp://" + echo, "ping"}, &out, &errb); err != nil {
		t.Fatalf("send: %v (%s)", err, errb.String())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 103 {
		t.Fatalf("%d lines, want 100 replies and 3 of summary:\n%s", len(lines), out.String())
	}
	for i, l := range lines[:100] {
		if want := "4 bytes from " + echo + ": seq=" + strconv.Itoa(i+1) + " time="; !strings.HasPrefix(l, want) || !strings.HasSuffix(l, " ms") {
			t.Errorf("line %d is %q, want %q...", i+1, l, want)
		}
	}
	if lines[100] != "--- udp://"+echo+" ---" || lines[101] != "100 sent, 100 received, 0% loss" ||
		!strings.HasPrefix(lines[102], "latency min/p50/p90/p99/max = ") || !strings.HasSuffix(lines[102], " ms") {
		t.Errorf("summary:\n%s", strings.Join(lines[100:], "\n"))
	}

	// Only the first three requests are answered: two of five are lost.
	some := udpResponder(t, func(n int, req []byte, from netip.AddrPort, srv, _ *net.UDPConn) {
		if n <= 3 {
			srv.WriteToUDPAddrPort(req, from)
		}
	})
	out.Reset()
	errb.Reset()
	err := Run(context.Background(), []string{"send", "-count", "5", "-timeout", "100ms", "udp://" + some, "ping"}, &out, &errb)
	if exitCode(err) != 1 {
		t.Errorf("exit %d (%v), want 1 after losses", exitCode(err), err)
	}
	if !strings.Contains(out.String(), "\n5 sent, 3 received, 40% loss\n") || strings.Count(errb.String(), "no reply from") != 2 {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
}

// runPorts are the ports of a `udpgate run` started by startRun.
type runPorts struct {
	echo, time, coap, rpc, extra uint16
	ws                           uint16 // TCP
	http                         string // base URL of the HTTP endpoint, http://127.0.0.1:PORT
	nats                         string // URL of the embedded NATS server
	out                          *syncBuffer
}

// startRun starts `udpgate run` in-process, as TestRun does: its built-in
// listeners on free ports, an extra raw listener no group serves, the
// HTTP endpoint on a free port, until the test ends. It returns once the
// banner is printed (the groups have been discovered by then).
func startRun(t *testing.T, listeners ...string) runPorts {
	t.Helper()
	saved := node.Builtins
	t.Cleanup(func() { node.Builtins = saved })
	node.Builtins = slices.Clone(saved)
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_HTTP_LISTEN", "127.0.0.1:0") // the banner says which port
	metrics := regexp.MustCompile(`metrics\s+(http://\S+)/metrics`)
	// A port chosen free can be taken by another test process before
	// run binds it: run is started again, on other ports, a few times.
	for attempt := 1; ; attempt++ {
		u := freeUDPPorts(t, 5)
		p := runPorts{echo: u[0], time: u[1], coap: u[2], rpc: u[3], extra: u[4], ws: freeTCPPort(t)}
		node.Builtins[0].Port, node.Builtins[1].Port, node.Builtins[2].Port, node.Builtins[3].Port = p.echo, p.time, p.coap, p.rpc
		node.Builtins[4].Port = p.ws
		t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
		t.Setenv("UDPGATE_LISTENERS", strings.Join(append([]string{"127.0.0.1:" + strconv.Itoa(int(p.extra)) + "/raw"}, listeners...), ","))
		out, err := runUntilStarted(t)
		if err != nil && attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("run, attempt %d: %v: once more on other ports", attempt, err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		m := metrics.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("run printed no metrics URL:\n%s", out.String())
		}
		p.http, p.out = m[1], out
		p.nats = regexp.MustCompile(`nats://127\.0\.0\.1:\d+`).FindString(out.String())
		return p
	}
}

// runUntilStarted runs `udpgate run` until the test ends and returns its
// output once it has printed its banner, or an error if it exited first.
func runUntilStarted(t *testing.T) (*syncBuffer, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errb := new(syncBuffer), new(syncBuffer)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, []string{"run"}, out, errb) }()
	exited := false
	t.Cleanup(func() {
		cancel()
		if exited {
			return
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not stop after cancel")
		}
	})
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "try:") {
		select {
		case err := <-done:
			exited = true
			return nil, fmt.Errorf("run exited: %v\n%s", err, errb.String())
		case <-deadline:
			t.Fatalf("run did not start:\n%s\n%s", out.String(), errb.String())
		case <-tick.C:
		}
	}
	return out, nil
}

// TestRun starts `udpgate run` in-process (its built-in listeners moved to
// free ports) and talks to both built-in workers and to the embedded NATS
// server from outside.
func TestRun(t *testing.T) {
	p := startRun(t)
	echoPort, timePort, coapPort, rpcPort, extra, out := p.echo, p.time, p.coap, p.rpc, p.extra, p.out
	for _, want := range []string{
		"worker echo", "worker time", "worker coap", "worker places", "rpc   -> udpgate.in." + strconv.Itoa(int(rpcPort)) + ".SERVICE.METHOD",
		"tcp 0.0.0.0:" + strconv.Itoa(int(p.ws)) + " ", "ws    -> udpgate.in." + strconv.Itoa(int(p.ws)) + ".SERVICE.METHOD  worker places",
		"go run . send ws://127.0.0.1:" + strconv.Itoa(int(p.ws)) + `/InterestingPlaces/GetRandom '{"limit": 2}'`, "coap  -> udpgate.in." + strconv.Itoa(int(coapPort)) + ".METHOD.PATH...", "127.0.0.1:" + strconv.Itoa(int(extra)) + "  raw", "no built-in worker",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run output lacks %q:\n%s", want, out.String())
		}
	}
	ask := func(port uint16, payload string) string {
		t.Helper()
		var o, e bytes.Buffer
		url := "udp://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
		if err := Run(context.Background(), []string{"send", "-timeout", "5s", url, payload}, &o, &e); err != nil {
			t.Fatalf("send %s: %v", url, err)
		}
		return o.String()
	}
	if got := ask(echoPort, "hi there"); got != "hi there\n" {
		t.Errorf("echo replied %q", got)
	}
	if got := ask(timePort, `["req-1", {}]`); !strings.HasPrefix(got, `["req-1","The time is `) {
		t.Errorf("time replied %q", got)
	}
	var o, e bytes.Buffer
	coapURL := "coap://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), coapPort).String() + "/hello"
	if err := Run(context.Background(), []string{"send", "-timeout", "5s", coapURL}, &o, &e); err != nil || o.String() != "Hello from udpgate\n" {
		t.Errorf("send %s: %v, printed %q (%s)", coapURL, err, o.String(), e.String())
	}
	// A path nobody serves: 4.04 at once, on standard error; nothing on
	// standard output.
	o.Reset()
	e.Reset()
	missing := "coap://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), coapPort).String() + "/no/such/path"
	if err := Run(context.Background(), []string{"send", missing}, &o, &e); exitCode(err) != 1 || o.String() != "" || !strings.Contains(err.Error(), "4.04") {
		t.Errorf("send %s: %v (exit %d), printed %q", missing, err, exitCode(err), o.String())
	}
	o.Reset()
	e.Reset()
	rpcURL := "rpc://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rpcPort).String() + "/InterestingPlaces/GetRandom"
	if err := Run(context.Background(), []string{"send", "-timeout", "5s", rpcURL, `{"limit": 3}`}, &o, &e); err != nil ||
		strings.Count(o.String(), `"name"`) != 3 || !strings.Contains(o.String(), `"latitude"`) {
		t.Errorf("send %s: %v, printed %q (%s)", rpcURL, err, o.String(), e.String())
	}
	// The same call on the ws listener, which the places worker serves
	// too.
	o.Reset()
	e.Reset()
	wsURL := "ws://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.ws).String() + "/InterestingPlaces/GetRandom"
	if err := Run(context.Background(), []string{"send", "-timeout", "5s", wsURL, `{"limit": 2}`}, &o, &e); err != nil ||
		strings.Count(o.String(), `"name"`) != 2 {
		t.Errorf("send %s: %v, printed %q (%s)", wsURL, err, o.String(), e.String())
	}
	co, err := coapudp.Dial(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), coapPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	for path, want := range map[string]string{"/hello": "Hello from udpgate", "/time": "20"} {
		resp, err := co.Get(cctx, path)
		if err != nil {
			t.Fatalf("coap GET %s: %v", path, err)
		}
		body, _ := resp.ReadBody()
		if resp.Code() != codes.Content || !strings.HasPrefix(string(body), want) {
			t.Errorf("coap GET %s: %v %q", path, resp.Code(), body)
		}
	}
	resp, err := co.Get(cctx, "/.well-known/core")
	if err != nil {
		t.Fatalf("coap GET /.well-known/core: %v", err)
	}
	body, _ := resp.ReadBody()
	if cf, err := resp.ContentFormat(); resp.Code() != codes.Content || err != nil || cf != message.AppLinkFormat ||
		string(body) != `</echo>;rt="echo",</hello>;rt="hello";ct=0,</time>;obs;rt="time";ct=0` {
		t.Errorf("coap GET /.well-known/core: %v, content-format %v (%v), %q", resp.Code(), cf, err, body)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReadmeWorkersCompile keeps every complete Go program in the README
// identical to one in workers/examples/, which the build compiles.
func TestReadmeWorkersCompile(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	examples, err := filepath.Glob("workers/examples/*/main.go")
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	rest, blocks := string(readme), 0
	for {
		_, block, ok := strings.Cut(rest, "```go\n")
		if !ok {
			break
		}
		block, rest, _ = strings.Cut(block, "```")
		if !strings.HasPrefix(block, "package main") {
			continue
		}
		blocks++
		if n := strings.Count(block, "\n"); blocks == 1 && n > 15 {
			t.Errorf("the README's first worker is %d lines, more than 15", n)
		}
		found := false
		for _, f := range examples {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			found = found || strings.HasSuffix(string(src), block)
		}
		if !found {
			t.Errorf("a README program is not in workers/examples/*/main.go:\n%.200s", block)
		}
	}
	if blocks != len(examples) {
		t.Errorf("README has %d programs, workers/examples has %d", blocks, len(examples))
	}
}

// TestHelpListsEveryVariable: `udpgate help` lists every UDPGATE_*
// variable, each on its own indented line, on standard output.
func TestHelpListsEveryVariable(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"help"}, &out, &errb); err != nil {
		t.Fatalf("help: %v\n%s", err, errb.String())
	}
	_, vars, ok := strings.Cut(out.String(), "UDPGATE_NATS_URL is unset):\n")
	if !ok {
		t.Fatalf("no Environment section:\n%s", out.String())
	}
	lines := strings.Split(strings.TrimRight(vars, "\n"), "\n")
	if n := len(config.KnownVariables()); len(lines) != n {
		t.Errorf("%d variable lines, want %d", len(lines), n)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, "  "+config.Prefix+"_") {
			t.Errorf("line %d not indented as a variable: %q", i+1, l)
		}
	}
}

// TestMain runs the tests from the repository's root, where the README,
// deploy/ and workers/examples/ are.
func TestMain(m *testing.M) {
	if err := os.Chdir("../.."); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// defaults unsets every UDPGATE_* variable for the test (restored after
// it): each process it starts reads the defaults.
func defaults(t *testing.T) {
	t.Helper()
	for _, name := range config.KnownVariables() {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
}

// UDPGATE_BUILTINS=off starts run with the listeners of
// UDPGATE_LISTENERS alone.
func TestRunWithoutBuiltins(t *testing.T) {
	defaults(t)
	extra := freeUDPPort(t)
	t.Setenv("UDPGATE_BUILTINS", "off")
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_HTTP_LISTEN", "")
	t.Setenv("UDPGATE_LISTENERS", "127.0.0.1:"+strconv.Itoa(int(extra))+"/raw")
	ctx, cancel := context.WithCancel(context.Background())
	out, errb := new(syncBuffer), new(syncBuffer)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, []string{"run"}, out, errb) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(out.String(), "Ctrl-C stops"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("run did not start:\n%s\n%s", out.String(), errb.String())
		}
	}
	banner := out.String()
	if strings.Count(banner, "  udp ") != 1 || !strings.Contains(banner, strconv.Itoa(int(extra))+"  raw") || strings.Contains(banner, "worker ") || strings.Contains(banner, "try:") {
		t.Errorf("banner lists more than the one listener without a worker, or a hint:\n%s", banner)
	}

}
