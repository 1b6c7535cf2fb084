package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

// promtool returns the path of Prometheus's promtool. CI installs it
// (Debian's prometheus package); elsewhere the test is skipped, saying so.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool missing in CI: .ci/run installs Debian's prometheus package")
		}
		t.Skip("SKIPPED: promtool is not installed (apt-get install prometheus): the alerts and /metrics are not checked with it")
	}
	return p
}

// runPromtool runs promtool with args in dir, stdin from in, and returns
// its output and whether it exited 0.
func runPromtool(t *testing.T, dir string, in io.Reader, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir, cmd.Stdin = dir, in
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatalf("promtool %v: %v", args, err)
	}
	return string(out), err == nil
}

// alertRules returns the PrometheusRule of deploy/kubernetes/monitoring.yaml.
func alertRules(t *testing.T) monitoringv1.PrometheusRuleSpec {
	t.Helper()
	docs, problems := decodeManifests(map[string]string{"monitoring.yaml": kubernetesFiles(t)["monitoring.yaml"]})
	if len(problems) > 0 {
		t.Fatalf("monitoring.yaml: %v", problems)
	}
	for _, d := range docs {
		if r, ok := d.obj.(*monitoringv1.PrometheusRule); ok {
			return r.Spec
		}
	}
	t.Fatal("monitoring.yaml has no PrometheusRule")
	return monitoringv1.PrometheusRuleSpec{}
}

// TestAlertRules checks the PrometheusRule's groups with promtool, as a
// Prometheus would load them (check rules), and runs the unit tests of
// testdata/alerts.test.yml on them (test rules): each alert fires on the
// series it is for and stays quiet on the others. Changed rules must fail.
func TestAlertRules(t *testing.T) {
	promtool(t)
	spec := alertRules(t)
	tests, err := os.ReadFile("internal/cli/testdata/alerts.test.yml")
	if err != nil {
		t.Fatal(err)
	}
	rule := func(s *monitoringv1.PrometheusRuleSpec, alert string) *monitoringv1.Rule {
		for i := range s.Groups[0].Rules {
			if r := &s.Groups[0].Rules[i]; r.Alert == alert {
				return r
			}
		}
		t.Fatalf("no alert %s", alert)
		return nil
	}
	for _, tc := range []struct {
		name      string
		change    func(s *monitoringv1.PrometheusRuleSpec)
		checkOK   bool // promtool check rules passes
		testRules bool // promtool test rules passes
	}{
		{name: "as written", checkOK: true, testRules: true},
		{name: "an expression that does not parse", change: func(s *monitoringv1.PrometheusRuleSpec) {
			rule(s, "UdpgateNATSDisconnected").Expr.StrVal = "udpgate_nats_connected == "
		}},
		{name: "a slower alert", checkOK: true, change: func(s *monitoringv1.PrometheusRuleSpec) {
			d := monitoringv1.Duration("10m")
			rule(s, "UdpgateNATSDisconnected").For = &d
		}},
		{name: "garbage counted as a capacity drop", checkOK: true, change: func(s *monitoringv1.PrometheusRuleSpec) {
			r := rule(s, "UdpgateDatagramsDroppedCapacity")
			r.Expr.StrVal = strings.Replace(r.Expr.StrVal, `listener_full"`, `listener_full|malformed"`, 1)
		}},
		{name: "a threshold that lets 10 % go unanswered", checkOK: true, change: func(s *monitoringv1.PrometheusRuleSpec) {
			r := rule(s, "UdpgateRequestsUnanswered")
			r.Expr.StrVal = strings.Replace(r.Expr.StrVal, "> 0.05", "> 0.2", 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := *spec.DeepCopy()
			if tc.change != nil {
				tc.change(&s)
			}
			dir := t.TempDir()
			b, err := json.Marshal(map[string]any{"groups": s.Groups}) // JSON is YAML
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "udpgate-rules.yml"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "alerts.test.yml"), tests, 0o644); err != nil {
				t.Fatal(err)
			}
			out, ok := runPromtool(t, dir, nil, "check", "rules", "udpgate-rules.yml")
			if ok != tc.checkOK {
				t.Fatalf("promtool check rules: passed %v, want %v:\n%s", ok, tc.checkOK, out)
			}
			if !ok {
				return
			}
			out, ok = runPromtool(t, dir, nil, "test", "rules", "alerts.test.yml")
			if ok != tc.testRules {
				t.Errorf("promtool test rules: passed %v, want %v:\n%s", ok, tc.testRules, out)
			}
		})
	}
}

// TestMetricsLint scrapes a real `udpgate run` (gateway, built-in
// workers, NATS connection) and checks its /metrics with promtool check
// metrics, Prometheus's linter; the alerts use only metrics it serves. A
// broken exposition must fail. It serves a coaps listener too, whose
// metrics an alert uses.
func TestMetricsLint(t *testing.T) {
	promtool(t)
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("alice:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("UDPGATE_DTLS_PSK_FILE", psk)
	p := startRun(t, "127.0.0.1:"+strconv.Itoa(int(freeUDPPort(t)))+"/coaps")
	resp, err := http.Get(p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", resp.Status, err)
	}
	if out, ok := runPromtool(t, "", bytes.NewReader(scrape), "check", "metrics"); !ok {
		t.Errorf("promtool check metrics on udpgate run's /metrics:\n%s", out)
	}
	bad := "# HELP udpgate_things a counter without _total\n# TYPE udpgate_things counter\nudpgate_things 1\n"
	if out, ok := runPromtool(t, "", strings.NewReader(string(scrape)+bad), "check", "metrics"); ok || !strings.Contains(out, "_total") {
		t.Errorf("promtool check metrics passed a counter without _total: %s", out)
	}

	served := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (udpgate_\w+) `).FindAllStringSubmatch(string(scrape), -1) {
		served[m[1]] = true
	}
	for _, g := range alertRules(t).Groups {
		for _, r := range g.Rules {
			for _, m := range regexp.MustCompile(`udpgate_[a-z_]+`).FindAllString(r.Expr.String(), -1) {
				if !served[m] {
					t.Errorf("%s uses %s, which udpgate run does not serve", r.Alert, m)
				}
			}
		}
	}
}
