package faults

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/config"
)

// TestBenchFaults runs the fault suite's short run, as CI does, and fails
// if any count misses its target (requests lost, duplicated): a
// regression in how the gateway behaves under a fault fails the build.
// Time goals are logged, not asserted: the standards keep wall-clock
// limits out of tests.
func TestBenchFaults(t *testing.T) {
	for _, name := range config.KnownVariables() {
		t.Setenv(name, "") // restored after the test
		os.Unsetenv(name)
	}
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	report, err := Run(ctx, cfg, slog.New(slog.DiscardHandler), Options{Short: true})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range report.Scenarios {
		names = append(names, s.Name)
		if s.Sent == 0 || s.Sent != s.Answered+s.Failed+s.Lost+s.Late {
			t.Errorf("scenario %s: sent %d, answered %d, failed %d, lost %d, late %d", s.Name, s.Sent, s.Answered, s.Failed, s.Lost, s.Late)
		}
		t.Logf("%s: sent %d, answered %d, failed %d, lost %d, late %d, duplicate %d; %s", s.Name, s.Sent, s.Answered, s.Failed, s.Lost, s.Late, s.Duplicate, s.Note)
	}
	for _, want := range ScenarioNames() {
		if !slices.ContainsFunc(names, func(n string) bool { return n == want || len(n) > len(want) && n[:len(want)+1] == want+"-" }) {
			t.Errorf("no row for scenario %s (rows %v)", want, names)
		}
	}
	if len(report.Goals) == 0 {
		t.Error("no goals")
	}
	for _, g := range report.Goals {
		if strings.HasSuffix(g.Name, "(ms)") {
			// A time, which a busy machine stretches: reported by
			// `udpgate bench faults`, never asserted in a test.
			t.Logf("goal %s: %g, want %s %g (met: %v; not asserted: a wall-clock figure)", g.Name, g.Value, g.Op, g.Goal, g.Met)
			continue
		}
		if why, known := knownMisses[g.Name]; !g.Met && known {
			t.Logf("goal %s not met: %g, want %s %g: a known miss: %s", g.Name, g.Value, g.Op, g.Goal, why)
		} else if !g.Met {
			t.Errorf("goal %s not met: %g, want %s %g %s", g.Name, g.Value, g.Op, g.Goal, g.Note)
		}
	}
}

// knownMisses are the goals that the code does not always meet yet, and
// why: the test reports them and does not fail. Remove an entry once its
// cause is fixed, so that a regression fails the build again.
var knownMisses = map[string]string{}
