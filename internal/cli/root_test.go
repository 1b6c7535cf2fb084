package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/internal/version"
)

// run runs the command line args and returns its outputs and exit status.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), exitCode(err)
}

func TestHelpOnStandardOutput(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"send", "--help"}, {"help", "send"}, {"bench", "suite", "-h"}, {"pcap", "import", "--help"}} {
		out, errs, code := run(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:") || errs != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want the usage on stdout, exit 0", args, code, out, errs)
		}
	}
}

func TestVersion(t *testing.T) {
	want := version.Get().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if out, _, code := run(t, args...); code != 0 || out != want {
			t.Errorf("%q: exit %d, %q; want %q", args, code, out, want)
		}
	}
	out, _, code := run(t, "version", "--json")
	var v version.Info
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.GoVersion == "" || v.Version == "" {
		t.Errorf("version --json: exit %d, %q (%v)", code, out, err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // on stderr
	}{
		{nil, "which command?"},
		{[]string{"sned"}, `unknown command "sned"`},
		{[]string{"send"}, "accepts between 1 and 2 arg(s)"},
		{[]string{"send", "--bogus", "udp://127.0.0.1:9"}, "unknown flag: --bogus"},
		{[]string{"send", "--count", "0", "udp://127.0.0.1:9"}, "--count must be at least 1"},
		{[]string{"worker"}, "accepts 1 arg(s)"},
		{[]string{"pcap"}, "which one?"},
		{[]string{"pcap", "frob"}, `unknown command "frob"`},
		{[]string{"status", "extra"}, "unknown command"},
	} {
		_, errs, code := run(t, tt.args...)
		if code != 2 || !strings.Contains(errs, tt.want) || !strings.Contains(errs, "Usage:") {
			t.Errorf("%q: exit %d, stderr %q; want exit 2, %q and the usage", tt.args, code, errs, tt.want)
		}
	}
}

// Long flags may come after the arguments, and the single-dash spelling
// of Go's flag package still works; short flags stay short.
func TestFlagSpellings(t *testing.T) {
	echo := udpEcho(t)
	for _, args := range [][]string{
		{"send", "--count", "2", "udp://" + echo, "hi"},
		{"send", "udp://" + echo, "hi", "--count", "2"},
		{"send", "-count", "2", "udp://" + echo, "hi"},
		{"send", "-count=2", "udp://" + echo, "hi", "-v"},
	} {
		out, errs, code := run(t, args...)
		if code != 0 || strings.Count(out, "bytes from") != 2 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want two replies", args, code, out, errs)
		}
	}
}

func TestCompletion(t *testing.T) {
	out, _, code := run(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, "udpgate") {
		t.Fatalf("completion bash: exit %d, %.200q", code, out)
	}
	out, _, code = run(t, "__complete", "send", "--co")
	if code != 0 || !strings.Contains(out, "--count") || !strings.Contains(out, "--content-format") {
		t.Errorf("completing send --co: exit %d, %q", code, out)
	}
	out, _, _ = run(t, "__complete", "worker", "")
	for _, name := range []string{"echo", "time", "coap", "places"} {
		if !strings.Contains(out, name) {
			t.Errorf("completing worker: %q lacks %s", out, name)
		}
	}
}

// udpEcho answers every datagram with itself, on loopback, until the test
// ends.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	return c.LocalAddr().String()
}
