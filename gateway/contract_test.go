package gateway

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestNodeWorker runs schemas/examples/node/worker.mjs, a worker written in
// JavaScript from schemas/README.md alone, against a real gateway. CI
// installs its dependencies (.ci/run: npm ci); elsewhere the test says how.
func TestNodeWorker(t *testing.T) {
	dir, err := filepath.Abs("../schemas/examples/node")
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if _, serr := os.Stat(filepath.Join(dir, "node_modules", "nats")); err != nil || serr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node or its dependencies missing in CI (node: %v; run npm ci in %s)", err, dir)
		}
		t.Skipf("needs node and `npm ci` in %s", dir)
	}
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, node, "worker.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"NATS_URL="+s.ClientURL(),
		"SUBJECT="+schemas.InSubject("udpgate", uint16(addrs[0].Port)),
		"GROUP=node-upper",
	)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("worker.mjs exited: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("worker.mjs not ready after 30s: %s", stderr.String())
	}
	for _, msg := range []string{"hello from udp", "żółw ąę"} {
		got, err := exchangeUDP(t, addrs[0].String(), []byte(msg), 5*time.Second)
		if err != nil {
			t.Fatalf("%q: no reply: %v (worker stderr: %s)", msg, err, stderr.String())
		}
		if want := strings.ToUpper(msg); string(got) != want {
			t.Errorf("reply %q, want %q", got, want)
		}
	}
}
