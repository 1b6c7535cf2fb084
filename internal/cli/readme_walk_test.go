package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeSkips are the README's shell commands the walk does not run, each
// with why; every one must match a command, so that none is skipped by
// accident.
var readmeSkips = []struct{ prefix, why string }{
	{"go test ./...", "the tests themselves"},
	{"UDPGATE_BUILTINS=time,coap,places go run . run &", "the Lambda section needs a Lambda endpoint (TestLambdaCommand runs the bridge against a stand-in)"},
	{"go run . worker echo &", "the Lambda section"},
	{"UDPGATE_LAMBDA_FUNCTION=shout", "the Lambda section"},
	{"pkill -f 'udpgate worker echo'", "the Lambda section"},
	{"UDPGATE_NATS_URL=nats://nats-1:4222", "a production cluster (internal/cli/deploy_test.go checks the deployment files)"},
	{"docker compose", "no Docker engine here (deploy_test.go checks docker-compose.yml)"},
}

// readmeStep is one command of the README and the output it shows.
type readmeStep struct {
	line   int
	cmd    string
	output []string // the lines the README shows after it, if any
}

// readmeSteps returns the commands of the README's ```sh blocks, in
// order. In a block whose commands start with "$ ", the lines after a
// command are its output.
func readmeSteps(t *testing.T) []readmeStep {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		steps   []readmeStep
		block   []string
		start   int
		inBlock bool
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case !inBlock && l == "```sh":
			inBlock, block, start = true, nil, n+1
		case inBlock && l == "```":
			inBlock = false
			prompted := false
			for _, b := range block {
				prompted = prompted || strings.HasPrefix(b, "$ ")
			}
			for i, b := range block {
				switch {
				case prompted && strings.HasPrefix(b, "$ "):
					steps = append(steps, readmeStep{line: start + i, cmd: strings.TrimPrefix(b, "$ ")})
				case prompted && len(steps) > 0:
					steps[len(steps)-1].output = append(steps[len(steps)-1].output, b)
				case !prompted && strings.TrimSpace(b) != "":
					steps = append(steps, readmeStep{line: start + i, cmd: b})
				}
			}
		case inBlock:
			block = append(block, l)
		}
	}
	return steps
}

// TestReadmeWalk runs the README's shell commands in order, as a new user
// would after `go run . run`, against a fresh node on ports the test
// chooses (the README's ports are rewritten to them): each command must
// succeed, and print what the README shows where that output does not
// change from run to run.
func TestReadmeWalk(t *testing.T) {
	if testing.Short() {
		t.Skip("builds udpgate and runs every README command (about a minute)")
	}
	defaults(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "udpgate"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, tool := range []string{"coap-client-notls", "tshark"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s missing in CI (.ci/run installs it)", tool)
			}
			t.Skipf("needs %s", tool)
		}
	}

	// The README's ports, and the free ones the walk uses instead.
	ports := map[string]string{}
	for _, p := range []string{"9000", "9001", "5683", "7000", "9100", "7777", "4222", "9780", "8080"} {
		ports[p] = strconv.Itoa(int(freeUDPPort(t)))
	}
	ports["4222"] = strconv.Itoa(int(freeTCPPort(t)))
	ports["9780"] = strconv.Itoa(int(freeTCPPort(t)))
	ports["8080"] = strconv.Itoa(int(freeTCPPort(t))) // run's ws listener
	portRE := regexp.MustCompile(`\b(9000|9001|5683|7000|9100|7777|4222|9780|8080)\b`)
	// The examples the README starts with go run, built now with the
	// walk's ports in their source (a build overlay): starting one takes a
	// moment, not a compilation.
	examples, _ := filepath.Glob("workers/examples/*/main.go")
	overlay := map[string]map[string]string{"Replace": {}}
	for _, f := range examples {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		abs, _ := filepath.Abs(f)
		moved := filepath.Join(dir, filepath.Base(filepath.Dir(f))+".go")
		if err := os.WriteFile(moved, []byte(portRE.ReplaceAllStringFunc(string(src), func(p string) string { return ports[p] })), 0o600); err != nil {
			t.Fatal(err)
		}
		overlay["Replace"][abs] = moved
	}
	ob, _ := json.Marshal(overlay)
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, ob, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range examples {
		name := filepath.Base(filepath.Dir(f))
		b := exec.Command("go", "build", "-overlay", overlayFile, "-o", filepath.Join(bin, "example-"+name), "./"+filepath.Dir(f))
		if out, err := b.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", f, err, out)
		}
	}
	exampleRE := regexp.MustCompile(`go run \./workers/examples/(\w+)`)
	rewrite := func(cmd string) string {
		cmd = exampleRE.ReplaceAllString(cmd, "example-$1")
		cmd = strings.ReplaceAll(cmd, "coap://127.0.0.1/", "coap://127.0.0.1:5683/")
		cmd = strings.ReplaceAll(cmd, "/tmp/udpgate.pcap", filepath.Join(dir, "udpgate.pcap"))
		cmd = strings.ReplaceAll(cmd, "go run . ", "udpgate ")
		return portRE.ReplaceAllStringFunc(cmd, func(p string) string { return ports[p] })
	}
	env := append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"UDPGATE_NATS_URL=nats://127.0.0.1:"+ports["4222"],
		"UDPGATE_BUILTINS=echo="+ports["9000"]+",time="+ports["9001"]+",coap="+ports["5683"]+",places="+ports["7000"]+",places-ws="+ports["8080"],
	)
	runEnv := append(env,
		"UDPGATE_NATS_LISTEN=127.0.0.1:"+ports["4222"],
		"UDPGATE_HTTP_LISTEN=127.0.0.1:"+ports["9780"],
		"UDPGATE_DATA_DIR="+filepath.Join(dir, "data"),
	)

	// Everything started in the background lives in a process group of
	// its own, killed when the walk ends or when run restarts.
	// stopAll waits for the processes it kills to exit, so that the next
	// run finds their ports free even on a busy machine.
	var groups []int
	var exited []chan struct{}
	stopAll := func() {
		for _, pgid := range groups {
			syscall.Kill(-pgid, syscall.SIGTERM)
		}
		time.Sleep(200 * time.Millisecond)
		for _, pgid := range groups {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		for _, done := range exited {
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		}
		groups, exited = nil, nil
	}
	t.Cleanup(stopAll)
	start := func(step readmeStep, cmd string, env []string) *os.File {
		out, err := os.CreateTemp(dir, "out-")
		if err != nil {
			t.Fatal(err)
		}
		c := exec.Command("bash", "-c", cmd)
		c.Dir, c.Env, c.Stdout, c.Stderr = ".", env, out, out
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			t.Fatalf("README.md:%d: %s: %v", step.line, step.cmd, err)
		}
		groups = append(groups, c.Process.Pid)
		done := make(chan struct{})
		exited = append(exited, done)
		go func() {
			c.Wait()
			close(done)
		}()
		return out
	}
	skipped := map[string]bool{}
	for _, step := range readmeSteps(t) {
		if i := skipIndex(step.cmd); i >= 0 {
			skipped[readmeSkips[i].prefix] = true
			t.Logf("README.md:%d: skipped (%s): %s", step.line, readmeSkips[i].why, step.cmd)
			continue
		}
		cmd := rewrite(step.cmd)
		if strings.Contains(stripComment(cmd), "udpgate run") {
			// A new run replaces the one before, as a user stops one
			// (Ctrl-C) before starting another.
			stopAll()
			out := start(step, strings.TrimSuffix(strings.TrimSpace(cmd), "&"), runEnv)
			waitForOutput(t, step, out, "Ctrl-C stops", 60*time.Second)
			continue
		}
		if strings.HasSuffix(strings.TrimSpace(stripComment(cmd)), "&") {
			start(step, cmd, env)
			time.Sleep(2 * time.Second) // a worker subscribes
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		c := exec.CommandContext(ctx, "bash", "-c", cmd)
		c.Dir, c.Env = ".", env
		if strings.HasPrefix(cmd, "udpgate healthcheck") || strings.HasPrefix(cmd, "udpgate status") {
			// They find the gateway by UDPGATE_HTTP_LISTEN, as run has it.
			c.Env = append(env, "UDPGATE_HTTP_LISTEN=127.0.0.1:"+ports["9780"])
		}
		out, err := c.Output()
		cancel()
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		if err != nil {
			t.Errorf("README.md:%d: %s\n  ran %s: %v\n%s%s", step.line, step.cmd, cmd, err, out, stderr)
			continue
		}
		if want := stableOutput(step.output); want != "" && strings.TrimSpace(string(out)) != want {
			t.Errorf("README.md:%d: %s\n  printed %q\n  the README shows %q", step.line, step.cmd, strings.TrimSpace(string(out)), want)
		}
	}
	for _, s := range readmeSkips {
		if !skipped[s.prefix] {
			t.Errorf("readmeSkips lists %q, which no README command starts with any more", s.prefix)
		}
	}
}

func skipIndex(cmd string) int {
	for i, s := range readmeSkips {
		if strings.HasPrefix(strings.TrimSpace(cmd), s.prefix) {
			return i
		}
	}
	return -1
}

// stripComment drops a trailing shell comment (" # ...").
func stripComment(cmd string) string {
	if i := strings.Index(cmd, " # "); i >= 0 {
		return cmd[:i]
	}
	return cmd
}

// stableOutput returns the output the README shows, when it is the same
// on every run: not a time, a random place, a latency or an elision.
func stableOutput(lines []string) string {
	text := strings.TrimSpace(strings.Join(lines, "\n"))
	if regexp.MustCompile(`\d{4}-\d\d-\d\dT|\.\.\.|…|latitude| ms\b|\d+ms\b`).MatchString(text) {
		return ""
	}
	return text
}

// waitForOutput waits until the file f, a background command's output,
// holds want.
func waitForOutput(t *testing.T, step readmeStep, f *os.File, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(f.Name())
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("README.md:%d: %s: no %q after %s:\n%s", step.line, step.cmd, want, limit, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
