package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/bench/nginx"
	"github.com/udpgate/udpgate/bench/suite"
)

// echoTarget runs a UDP echo server until the test ends and returns its
// udp:// URL.
func echoTarget(t *testing.T) string {
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
	return "udp://" + c.LocalAddr().String()
}

func TestBenchUsage(t *testing.T) {
	target := echoTarget(t)
	for _, tt := range []struct {
		name string
		args []string
		code int
	}{
		{"no target", []string{"bench"}, 2},
		{"two targets", []string{"bench", target, target}, 2},
		{"zero concurrency", []string{"bench", "-c", "0", target}, 2},
		{"bad flag", []string{"bench", "--nope", target}, 2},
		{"bad scheme", []string{"bench", "--count", "1", "http://127.0.0.1:1/"}, 2},
		{"bad source", []string{"bench", "--sources", "x", target}, 2},
		{"suite: unknown case", []string{"bench", "suite", "--cases", "nope"}, 2},
		{"suite: zero reps", []string{"bench", "suite", "--reps", "0"}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := Run(context.Background(), tt.args, &stdout, &stderr)
			if got := exitCode(err); err == nil || got != tt.code {
				t.Errorf("exit code %d (%v), want %d; stderr:\n%s", got, err, tt.code, stderr.String())
			}
		})
	}
}

func TestParseSources(t *testing.T) {
	for _, tt := range []struct {
		in    string
		n     int
		first string
		err   bool
	}{
		{"127.0.0.2", 1, "127.0.0.2", false},
		{"127.0.1.0/24", 254, "127.0.1.1", false},
		{"127.0.1.7/32", 1, "127.0.1.7", false},
		{"::1/128", 1, "::1", false},
		{"127.0.0.0/8", 0, "", true},
		{"nope", 0, "", true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSources(tt.in)
			if tt.err {
				if err == nil {
					t.Errorf("no error")
				}
				return
			}
			if err != nil || len(got) != tt.n || got[0].String() != tt.first {
				t.Errorf("%d addresses from %v (%v), want %d from %s", len(got), got[:min(len(got), 1)], err, tt.n, tt.first)
			}
		})
	}
}

func TestBenchJSON(t *testing.T) {
	target := echoTarget(t)
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), []string{"bench", "--count", "500", "--concurrency", "8", "--sockets", "2", "--size", "64",
		"--sources", "127.0.0.1,127.0.3.0/30", "--json", target}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	var res struct {
		Mode                 string
		Sent, Answered, Lost int64
		Latency              struct{ Min, P50, P99, Max float64 } `json:"latency_us"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("%v:\n%s", err, stdout.String())
	}
	if res.Mode != "closed" || res.Sent != 500 || res.Answered != 500 || res.Lost != 0 {
		t.Errorf("result %+v", res)
	}
	if l := res.Latency; !(l.Min <= l.P50 && l.P50 <= l.P99 && l.P99 <= l.Max && l.Max > 0) {
		t.Errorf("latency %+v", l)
	}
}

func TestBenchText(t *testing.T) {
	target := echoTarget(t)
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), []string{"bench", "--rate", "2000", "--count", "100", target}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	for _, want := range []string{"open loop at 2,000 requests/s", "requests/s", "p99.9", "sent 100  answered 100  lost 0  errors 0"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestBenchNothingAnswers(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // bound, never read: every request is lost
	var stdout, stderr bytes.Buffer
	err = Run(context.Background(), []string{"bench", "--count", "3", "--timeout", "50ms", "udp://" + c.LocalAddr().String()}, &stdout, &stderr)
	if exitCode(err) != 1 || !strings.Contains(stdout.String(), "lost 3") {
		t.Errorf("err %v; stdout:\n%s", err, stdout.String())
	}
}

// TestBenchSuiteSmoke runs every case of the suite briefly: it checks that
// the suite works and reports every case and ratio, not how fast anything
// is.
func TestBenchSuiteSmoke(t *testing.T) {
	defaults(t)
	t.Setenv("UDPGATE_NODE", "bench-test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := Run(ctx, []string{"bench", "suite", "--duration", "300ms", "--reps", "1", "--json",
		"--no-loss-duration", "300ms", "--addresses", "500", "--long-warmup", "200"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	var report struct {
		Cases []struct {
			Name string   `json:"name"`
			Rate *float64 `json:"rate"`
			P50  *float64 `json:"p50_us"`
			P99  *float64 `json:"p99_us"`
			Lost *int64   `json:"lost"`
			Sent int64    `json:"sent"`
			// Skipped: a case whose peer is not installed (nginx).
			Skipped bool               `json:"skipped"`
			Note    string             `json:"note"`
			Extra   map[string]float64 `json:"extra"`
		} `json:"cases"`
		Ratios map[string]float64 `json:"ratios"`
		Goals  []bench.Goal       `json:"goals"`
	}
	dec := json.NewDecoder(&stdout)
	if err := dec.Decode(&report); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if dec.More() {
		t.Error("more than one JSON value on stdout")
	}
	var names []string
	skipped := map[string]bool{}
	for _, c := range report.Cases {
		names = append(names, c.Name)
		if c.Rate == nil || c.P50 == nil || c.P99 == nil || c.Lost == nil {
			t.Errorf("case %s lacks a field", c.Name)
			continue
		}
		if c.Skipped {
			skipped[c.Name] = true
			if !strings.HasPrefix(c.Name, "nginx-") || os.Getenv("CI") != "" {
				t.Errorf("case %s skipped: %s", c.Name, c.Note)
			}
			continue
		}
		if c.Sent == 0 && c.Name != "gateway-memory" {
			t.Errorf("case %s sent nothing", c.Name)
		}
		if *c.Rate <= 0 {
			t.Errorf("case %s: rate %v", c.Name, *c.Rate)
		}
	}
	if want := suite.CaseNames(); !slices.Equal(names, want) {
		t.Errorf("cases %v, want %v", names, want)
	}
	for _, k := range bench.RatioKeys() {
		if num, den, _ := bench.RatioCases(k); skipped[num] || skipped[den] {
			continue
		}
		if _, ok := report.Ratios[k]; !ok {
			t.Errorf("ratio %q missing from %v", k, report.Ratios)
		}
	}
	// Every target of issue 15, measured or said why not.
	goals := map[string]bool{}
	for _, g := range report.Goals {
		goals[g.Name] = true
	}
	for _, want := range []string{
		"gateway-raw/udp-echo", "gateway-raw/nginx-udp", "gateway-raw-n1.p50/udp-echo-n1.p50",
		"gateway-coap-short/coap-direct-short", "gateway-coap-long/coap-direct-long", "gateway-ingest/js-publish",
		"gateway-raw-durable/udp-echo", "gateway-raw-open80 lost", "gateway-raw-durable-open80 lost", "gateway-memory rss_mib",
		"gateway-ws/gateway-rpc",
	} {
		if !goals[want] {
			t.Errorf("goal %q missing from %+v", want, report.Goals)
		}
	}
	for _, c := range report.Cases {
		if c.Name == "gateway-raw" && !(c.Extra["capture_bytes_per_msg"] > suite.Payload) {
			t.Errorf("gateway-raw: capture_bytes_per_msg %v, want more than the datagram's %d bytes (%s)", c.Extra["capture_bytes_per_msg"], suite.Payload, c.Note)
		}
	}
}

// TestBenchSuiteNginx runs the nginx-udp cases briefly: nginx proxies UDP
// to the suite's echo server and answers. Without nginx it is skipped,
// except in CI, which installs it.
func TestBenchSuiteNginx(t *testing.T) {
	if _, err := nginx.Find(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: CI installs nginx and libnginx-mod-stream (.ci/run)", err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := Run(ctx, []string{"bench", "suite", "--duration", "200ms", "--reps", "1", "--json", "--cases", "nginx-udp,nginx-udp-n1"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	var report bench.Report
	if err := json.Unmarshal(stdout.Bytes(), &report); err != nil {
		t.Fatalf("not JSON: %v:\n%s", err, stdout.String())
	}
	if len(report.Cases) != 2 {
		t.Fatalf("cases %+v", report.Cases)
	}
	for _, c := range report.Cases {
		// nginx answered: a closed loop measures only what comes back.
		if c.Skipped || c.Sent == 0 || c.Rate <= 0 || c.P50us <= 0 || c.Lost > c.Sent/100 {
			t.Errorf("case %+v", c)
		}
	}
}

func TestBenchSuiteSelectsCases(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), []string{"bench", "suite", "--duration", "200ms", "--reps", "2", "--cases", "udp-echo-n1,udp-echo"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	if i, j := strings.Index(out, "udp-echo "), strings.Index(out, "udp-echo-n1"); i < 0 || j < 0 || i > j || strings.Contains(out, "gateway") {
		t.Errorf("output:\n%s", out)
	}
	if errors.Is(err, errUsage) {
		t.Error(err)
	}
}

func TestBenchSuiteCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.prof")
	var stdout, stderr bytes.Buffer
	err := Run(context.Background(), []string{"bench", "suite", "--duration", "200ms", "--reps", "1", "--cases", "udp-echo", "--cpuprofile", path}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// pprof writes a gzip-compressed profile.proto.
	if len(b) < 20 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("%s is not a gzip-compressed profile (%d bytes)", path, len(b))
	}
	if err := Run(context.Background(), []string{"bench", "suite", "--cases", "udp-echo", "--cpuprofile", filepath.Join(t.TempDir(), "no", "such", "dir")}, &stdout, &stderr); err == nil || errors.Is(err, errUsage) {
		t.Errorf("unwritable profile path: err %v, want an error naming it", err)
	}
}
