package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// readmeCoAPRun is one `$ coap-client-notls ...` line of the README's CoAP
// section and the lines it shows as its output.
type readmeCoAPRun struct {
	args []string
	want string
}

// readmeCoAPRuns returns the coap-client-notls commands of the README's
// "A CoAP worker" section that follow the sensors program, with their
// outputs.
func readmeCoAPRuns(t *testing.T) []readmeCoAPRun {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "### A CoAP worker")
	if !ok {
		t.Fatal(`README.md has no "### A CoAP worker" section`)
	}
	section, _, _ = strings.Cut(section, "\n### ")
	_, after, ok := strings.Cut(section, "go run ./workers/examples/sensors &")
	if !ok {
		t.Fatal("the README's CoAP section does not start the sensors example")
	}
	block, _, _ := strings.Cut(after, "```")
	var runs []readmeCoAPRun
	sc := bufio.NewScanner(strings.NewReader(block))
	for sc.Scan() {
		line := sc.Text()
		if cmd, ok := strings.CutPrefix(line, "$ coap-client-notls "); ok {
			cmd, _, _ = strings.Cut(cmd, "  #") // a comment
			var args []string
			for _, f := range strings.Fields(cmd) {
				args = append(args, strings.Trim(f, "'"))
			}
			runs = append(runs, readmeCoAPRun{args: args})
			continue
		}
		if len(runs) > 0 && line != "" {
			runs[len(runs)-1].want += line + "\n"
		}
	}
	if len(runs) < 4 {
		t.Fatalf("%d coap-client-notls commands after the sensors example, want at least 4", len(runs))
	}
	return runs
}

// TestReadmeSecondCoAPGroup runs the README's second CoAP group as written:
// `run` with the built-in groups, the sensors example (its port rewritten
// to the test's, through a build overlay), and the README's libcoap
// commands, whose output must be what the README shows; the unserved ones
// end at once, long before the deadline.
func TestReadmeSecondCoAPGroup(t *testing.T) {
	client, err := exec.LookPath("coap-client-notls")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("coap-client-notls missing in CI: .ci/run installs libcoap3-bin")
		}
		t.Skip("needs libcoap's coap-client-notls: apt-get install libcoap3-bin")
	}
	runs := readmeCoAPRuns(t)

	t.Setenv("UDPGATE_DISCOVERY_INTERVAL", "200ms")
	run := startRun(t)
	coapPort := run.coap

	// The example, with the test's port for 5683.
	src, err := os.ReadFile(filepath.Join("workers", "examples", "sensors", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(src, []byte("5683)")) {
		t.Fatal("workers/examples/sensors/main.go no longer serves port 5683")
	}
	dir := t.TempDir()
	rewritten := filepath.Join(dir, "main.go")
	os.WriteFile(rewritten, bytes.ReplaceAll(src, []byte("5683)"), []byte(strconv.Itoa(int(coapPort))+")")), 0o600)
	abs, err := filepath.Abs(filepath.Join("workers", "examples", "sensors", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {abs: rewritten}})
	os.WriteFile(filepath.Join(dir, "overlay.json"), overlay, 0o600)
	bin := filepath.Join(dir, "sensors")
	build := exec.Command("go", "build", "-overlay", filepath.Join(dir, "overlay.json"), "-o", bin, "./workers/examples/sensors")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build the sensors example: %v\n%s", err, out)
	}

	if run.nats == "" {
		t.Fatalf("run printed no NATS URL:\n%s", run.out.String())
	}
	sensors := exec.Command(bin)
	sensors.Env = append(os.Environ(), "UDPGATE_NATS_URL="+run.nats, "UDPGATE_HTTP_LISTEN=")
	var sensorsErr syncBuffer
	sensors.Stderr = &sensorsErr
	if err := sensors.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sensors.Process.Signal(os.Interrupt)
		sensors.Wait()
	})

	coapClient := func(args ...string) (string, time.Duration) {
		t.Helper()
		for i, a := range args {
			args[i] = strings.Replace(a, "coap://127.0.0.1/", "coap://127.0.0.1:"+strconv.Itoa(int(coapPort))+"/", 1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, client, append([]string{"-B", "20"}, args...)...)
		got, err := cmd.Output()
		if err != nil && ctx.Err() != nil {
			t.Fatalf("coap-client-notls %s: %v", strings.Join(args, " "), err)
		}
		return string(got), time.Since(start)
	}
	// The example is ready once discovery lists it.
	wait := time.Now().Add(30 * time.Second)
	for {
		got, _ := coapClient("-m", "get", "coap://127.0.0.1/.well-known/core")
		if strings.Contains(got, "/sensors/1") {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("the sensors group never appeared in /.well-known/core (%q); its stderr:\n%s", got, sensorsErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range runs {
		got, took := coapClient(slices.Clone(r.args)...)
		// coap-client ends the body with a newline; the JSON encoder
		// already did.
		if strings.TrimSpace(got) != strings.TrimSpace(r.want) {
			t.Errorf("coap-client-notls %s printed %q; the README shows %q", strings.Join(r.args, " "), got, r.want)
		}
		if r.want == "" && took > 2500*time.Millisecond {
			t.Errorf("coap-client-notls %s took %v: an unserved request should be answered at once, not at the 5 s deadline", strings.Join(r.args, " "), took)
		}
	}
}
