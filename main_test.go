package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
)

// defaults returns env as envconfig fills it with no UDPGATE_* variable
// set, and node n1.
func defaults(t *testing.T) env {
	t.Helper()
	for _, name := range knownVariables() {
		t.Setenv(name, "") // restored after the test
		os.Unsetenv(name)
	}
	var e env
	if err := envconfig.Process(envPrefix, &e); err != nil {
		t.Fatal(err)
	}
	e.Node = "n1"
	return e
}

func TestConfigDefaultsAreValid(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Deadline != 5*time.Second || c.StreamMaxBytes != 1<<30 || c.Prefix != "udpgate" || c.NATSListen.Port() != 4222 {
		t.Errorf("unexpected defaults: %+v", c)
	}
}

func TestConfigReportsEveryBadVariable(t *testing.T) {
	e := defaults(t)
	e.Listeners = "9000/raw,abc/raw,9002/udp,9003"
	e.NATSListen = "localhost"
	e.SubjectPrefix = "a..b"
	e.Stream = "UDP GATE"
	e.StreamMaxAge = "yesterday"
	e.StreamMaxBytes = "lots"
	e.StreamReplicas = "7"
	e.Deadline = "0s"
	e.MaxDatagram = "70000"
	e.LogLevel = "loud"
	e.CoAPBlockSize = "1000"
	e.CoAPMaxBody = "0"
	_, err := e.parse([]string{"UDPGATE_LISTENER=9000/raw", "PATH=/bin", "UDPGATE_NODE=x"})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`UDPGATE_LISTENERS: "abc/raw"`, `"9002/udp": unknown protocol "udp"`, `"9003": want [ADDR:]PORT/PROTOCOL`,
		"UDPGATE_NATS_LISTEN:", "UDPGATE_SUBJECT_PREFIX:", "UDPGATE_STREAM:", "UDPGATE_STREAM_MAX_AGE:",
		"UDPGATE_STREAM_MAX_BYTES:", "UDPGATE_STREAM_REPLICAS:", "UDPGATE_DEADLINE:", "UDPGATE_MAX_DATAGRAM:",
		"UDPGATE_LOG_LEVEL:", "UDPGATE_COAP_BLOCK_SIZE: 1000 is not a power of two", "UDPGATE_COAP_MAX_BODY:",
		`UDPGATE_LISTENERS: "9002/udp"`, "UDPGATE_LISTENER: not a udpgate variable (did you mean UDPGATE_LISTENERS?)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "UDPGATE_NODE:") || strings.Contains(msg, "PATH") {
		t.Errorf("error mentions a good variable:\n%s", msg)
	}
}

func TestConfigPiggybackShorterThanDeadline(t *testing.T) {
	e := defaults(t)
	e.CoAPPiggyback = "6s"
	_, err := e.parse(nil)
	if err == nil || !strings.Contains(err.Error(), "UDPGATE_COAP_PIGGYBACK: 6s is not shorter than UDPGATE_DEADLINE 5s") {
		t.Errorf("error %v", err)
	}
}

func TestParseListeners(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{"", nil, ""},
		{"9000/raw", []string{"0.0.0.0:9000/raw"}, ""},
		{" 9000/raw , 127.0.0.1:9001/raw,[::1]:9002/raw", []string{"0.0.0.0:9000/raw", "127.0.0.1:9001/raw", "[::1]:9002/raw"}, ""},
		{"9000/raw,9000/raw", []string{"0.0.0.0:9000/raw"}, ""},
		{"0/raw", nil, "port must be"},
		{"70000/raw", nil, "not IP:PORT"},
		{"5683/coap", []string{"0.0.0.0:5683/coap"}, ""},
		{"7000/rpc", []string{"0.0.0.0:7000/rpc"}, ""},
		{"9000/udp", nil, "unknown protocol"},
		{"9000/raw,9000/coap", nil, "already a raw listener"},
		{"host:9000/raw", nil, "not IP:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ls, err := parseListeners(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range ls {
				got = append(got, l.String())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", -1, true}, {"-1", -1, true}, {"1024", 1024, true}, {"512MiB", 512 << 20, true},
		{"10GB", 10e9, true}, {"1 GiB", 1 << 30, true}, {"x", 0, false}, {"-2", 0, false}, {"9999999TiB", 0, false},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzParseListeners(f *testing.F) {
	for _, s := range []string{"9000/raw", "0.0.0.0:9001/raw,[::]:9002/raw", "/", ":/raw", "[::1/raw", "1/raw,1/raw"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ls, err := parseListeners(s)
		if err != nil {
			return
		}
		for _, l := range ls {
			if l.Addr.Port() == 0 || l.Protocol == "" {
				t.Fatalf("%q parsed to %v", s, l)
			}
		}
	})
}

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

func TestGatewayFailsClearlyWithoutNATS(t *testing.T) {
	url := "nats://user:secret@127.0.0.1:" + strconv.Itoa(int(freeTCPPort(t)))
	t.Setenv("UDPGATE_NATS_URL", url)
	t.Setenv("UDPGATE_LISTENERS", "127.0.0.1:"+strconv.Itoa(int(freeUDPPort(t)))+"/raw")
	var out, errb bytes.Buffer
	err := runCommand(context.Background(), []string{"gateway"}, &out, &errb)
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

func TestSend(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "ping" {
				srv.WriteToUDPAddrPort([]byte("pong"), from)
			}
		}
	}()
	url := "udp://" + srv.LocalAddr().String()
	var out, errb bytes.Buffer
	if err := runCommand(context.Background(), []string{"send", url, "ping"}, &out, &errb); err != nil {
		t.Fatalf("send: %v (%s)", err, errb.String())
	}
	if out.String() != "pong\n" {
		t.Errorf("printed %q, want pong", out.String())
	}
	err = runCommand(context.Background(), []string{"send", "-timeout", "100ms", url, "silence"}, &out, &errb)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "no reply from") {
		t.Errorf("no reply: err %v, exit %d", err, exitCode(err))
	}
	if err := runCommand(context.Background(), []string{"send", "tcp://x:1", "a"}, &out, &errb); err == nil {
		t.Error("tcp:// accepted")
	}
}

// TestRun starts `udpgate run` in-process (its built-in listeners moved to
// free ports) and talks to both built-in workers and to the embedded NATS
// server from outside.
func TestRun(t *testing.T) {
	saved := builtinListeners
	t.Cleanup(func() { builtinListeners = saved })
	builtinListeners = slices.Clone(saved)
	echoPort, timePort, coapPort, rpcPort := freeUDPPort(t), freeUDPPort(t), freeUDPPort(t), freeUDPPort(t)
	builtinListeners[0].port, builtinListeners[1].port, builtinListeners[2].port, builtinListeners[3].port = echoPort, timePort, coapPort, rpcPort
	extra := freeUDPPort(t)
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_LISTENERS", "127.0.0.1:"+strconv.Itoa(int(extra))+"/raw")

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	var errb syncBuffer
	done := make(chan error, 1)
	go func() { done <- runCommand(ctx, []string{"run"}, &out, &errb) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "try:") {
		select {
		case err := <-done:
			t.Fatalf("run exited: %v\n%s", err, errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("run did not start:\n%s\n%s", out.String(), errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		"worker echo", "worker time", "worker coap", "worker places", "rpc   -> udpgate.in." + strconv.Itoa(int(rpcPort)) + ".SERVICE.METHOD", "coap  -> udpgate.in." + strconv.Itoa(int(coapPort)) + ".METHOD.PATH...", "127.0.0.1:" + strconv.Itoa(int(extra)) + "  raw", "no built-in worker",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run output lacks %q:\n%s", want, out.String())
		}
	}
	ask := func(port uint16, payload string) string {
		t.Helper()
		var o, e bytes.Buffer
		url := "udp://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
		if err := runCommand(context.Background(), []string{"send", "-timeout", "5s", url, payload}, &o, &e); err != nil {
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
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop after cancel")
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
