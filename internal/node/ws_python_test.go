package node

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/config"
)

// ci reports whether the tests run under CI, where a missing tool is a
// failure, not a skip.
func ci() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// pythonWS returns a Python 3 that imports websockets and the protobuf
// runtime: python3 on PATH, or Debian's /usr/bin/python3 when the first
// is another (pyenv's, a virtualenv's) without them. protoc must be there
// too. Without them the test is skipped, but fails under CI.
func pythonWS(t *testing.T) string {
	t.Helper()
	const install = "apt-get install -y python3-websockets python3-protobuf protobuf-compiler"
	if _, err := exec.LookPath("protoc"); err != nil {
		if ci() {
			t.Fatal("CI is set and protoc is not installed (Debian: " + install + ")")
		}
		t.Skip("protoc is not installed (Debian: " + install + "); CI=true makes this a failure")
	}
	var tried []string
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(name)
		if err != nil || slices.Contains(tried, p) {
			continue
		}
		tried = append(tried, p)
		if exec.Command(p, "-c", "import websockets, google.protobuf").Run() == nil {
			return p
		}
	}
	if ci() {
		t.Fatalf("CI is set and no python3 (tried %v) imports websockets and google.protobuf (Debian: %s)", tried, install)
	}
	t.Skipf("no python3 (tried %v) imports websockets and google.protobuf (Debian: %s); CI=true makes this a failure", tried, install)
	return ""
}

// TestNodeWebSocketPython: a Python client, with the websockets library
// and the classes protoc generates from schemas/proto, calls GetRandom
// on a node's ws listener as an AWS API Gateway client does, base64 in
// text messages, and prints the places the built-in worker returns.
func TestNodeWebSocketPython(t *testing.T) {
	python := pythonWS(t)
	pb := t.TempDir()
	protos, err := filepath.Glob("../../schemas/proto/udpgate/*/v1/*.proto")
	if err != nil || len(protos) < 2 {
		t.Fatalf("the .proto files: %v, %v", protos, err)
	}
	args := []string{"-I", "../../schemas/proto", "--python_out", pb, "../../schemas/proto/google/type/latlng.proto"}
	if out, err := exec.Command("protoc", append(args, protos...)...).CombinedOutput(); err != nil {
		t.Fatalf("protoc --python_out: %v\n%s", err, out)
	}

	ls, err := config.ParseListeners("127.0.0.1:1/ws;path=/api")
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0) // any free port
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := Start(ctx, nodeConfig(t, map[string]string{}), discard, Options{Listeners: ls, Workers: []Worker{{Name: "places", Listener: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	cmd := exec.CommandContext(ctx, python, "testdata/ws_client.py", "ws://"+n.Ports[0].String()+"/api", pb)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ws_client.py: %v\n%s", err, out)
	}
	t.Logf("%s printed:\n%s", python, out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if lines[0] != "reply 42 STATUS_OK " {
		t.Fatalf("ws_client.py printed %q first, want the reply's id 42 and STATUS_OK; all:\n%s", lines[0], out)
	}
	// Limit 4: every place the worker knows, once each.
	names := map[string]bool{}
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		if len(f) != 3 || f[0] == "" || names[f[0]] {
			t.Fatalf("place line %q; all:\n%s", l, out)
		}
		names[f[0]] = true
	}
	if len(names) != 4 || !slices.Contains(lines, "Ustka Lighthouse\t54.58805789697384\t16.8546758958559") {
		t.Fatalf("places:\n%s", out)
	}
}
