package faults

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/config"
)

// Description says what `udpgate bench faults` does.
const Description = `The fault suite, on loopback, in this process: each scenario
starts its own embedded NATS (a 3-node JetStream cluster for
leader-stop; for leader-crash, three child processes of this program,
one of which is killed), gateway and echo workers, loads a listener
with an open loop (numbered datagrams, or CoAP CON requests from a
client that retransmits; one socket, a fixed rate), injects a fault
mid-run, and counts each request by number: sent, answered, failed
(an error response), lost, late (answered after --timeout) and
duplicate. The goals say which figures have a target and whether the
run met it.`

// faultScenario is one scenario of the fault suite.
type faultScenario struct {
	name string
	run  func(f *faults, ctx context.Context) error
}

// faultScenarios are the scenarios in the order they run.
var faultScenarios = []faultScenario{
	{"gateway-stop", (*faults).gatewayStop},
	{"gateway-handover", (*faults).gatewayHandover},
	{"leader-stop", (*faults).leaderStop},
	{"leader-crash", (*faults).leaderCrash},
	{"worker-stop", (*faults).workerStop},
}

// ScenarioNames returns the names of the suite's scenarios, in the order
// they run.
func ScenarioNames() []string {
	var names []string
	for _, s := range faultScenarios {
		names = append(names, s.name)
	}
	return names
}

// faults is one run of `udpgate bench faults`.
type faults struct {
	cfg      config.Config
	log      *slog.Logger
	rate     float64
	duration time.Duration // of each scenario's load
	timeout  time.Duration // a reply later than this is late
	rows     []faultRow
	goals    []bench.Goal
	live     bool
	stderr   io.Writer
}

// faultRow is one line of the report: a scenario (or one mode of it) and
// what its client counted.
type faultRow struct {
	Name      string  `json:"name"`
	Rate      float64 `json:"rate"` // asked, requests per second
	Sent      int64   `json:"sent"`
	Answered  int64   `json:"answered"` // in time, once or more
	Failed    int64   `json:"failed"`   // answered in time with an error (CoAP 4.xx, 5.xx or a reset)
	Lost      int64   `json:"lost"`     // never answered
	Late      int64   `json:"late"`     // answered only after the client's timeout
	Duplicate int64   `json:"duplicate"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	MaxUs     float64 `json:"max_us"`
	// Extra are the scenario's own figures (requests read before a
	// stop, capture retries, ...).
	Extra map[string]float64 `json:"extra,omitempty"`
	Note  string             `json:"note,omitempty"`
}

// Report is what a run of the fault suite found: the JSON document of
// `udpgate bench faults --json`.
type Report struct {
	Scenarios []faultRow     `json:"scenarios"`
	Goals     []bench.Goal   `json:"goals"`
	Machine   map[string]any `json:"machine,omitempty"`
}

// Options of a run of the fault suite. Zero values take the defaults of
// `udpgate bench faults`.
type Options struct {
	Short     bool          // a short run for CI: 2s per scenario at 400 requests/s, unless Duration or Rate say otherwise
	Duration  time.Duration // load of each scenario, the fault at its middle (16s; 2s if Short)
	Rate      float64       // requests per second of the open loop (2000; 400 if Short)
	Timeout   time.Duration // a reply later than this is late (bench.DefaultTimeout)
	Scenarios []string      // to run (all)
	// Progress, if not nil, gets a line as each scenario starts.
	Progress io.Writer
}

// ErrUnknownScenario is returned by Run for a scenario name that is not
// the suite's.
var ErrUnknownScenario = errors.New("unknown scenario")

// Run runs the fault suite with the gateway configuration cfg (its store,
// ports and node are the suite's own; its guard and HTTP endpoint off).
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, o Options) (Report, error) {
	if o.Duration == 0 {
		o.Duration = 16 * time.Second
		if o.Short {
			o.Duration = 2 * time.Second
		}
	}
	if o.Rate == 0 {
		o.Rate = 2000
		if o.Short {
			o.Rate = 400
		}
	}
	o.Timeout = cmp.Or(o.Timeout, bench.DefaultTimeout)
	selected := faultScenarios
	if len(o.Scenarios) > 0 {
		for _, name := range o.Scenarios {
			if !slices.Contains(ScenarioNames(), name) {
				return Report{}, fmt.Errorf("%w %q (scenarios: %s)", ErrUnknownScenario, name, strings.Join(ScenarioNames(), ", "))
			}
		}
		selected = slices.DeleteFunc(slices.Clone(faultScenarios), func(s faultScenario) bool { return !slices.Contains(o.Scenarios, s.name) })
	}
	cfg.Guard = guard.Config{} // the load comes from one address, faster than a source may send
	cfg.HTTPListen = ""
	fl := &faults{
		cfg: cfg, log: log, rate: o.Rate, duration: o.Duration, timeout: o.Timeout,
		live: o.Progress != nil, stderr: o.Progress,
	}
	for _, s := range selected {
		if err := ctx.Err(); err != nil {
			return Report{}, err
		}
		if fl.live {
			fmt.Fprintf(fl.stderr, "%s ...\n", s.name)
		}
		if err := s.run(fl, ctx); err != nil {
			return Report{}, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return Report{Scenarios: fl.rows, Goals: fl.goals, Machine: map[string]any{
		"go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.NumCPU(),
		"cpu": bench.CPUModel(), "duration": o.Duration.String(), "rate": o.Rate, "timeout": o.Timeout.String(),
	}}, nil
}

// WriteText writes r as two tables: the scenarios, then the goals.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tsent\tanswered\tfailed\tlost\tlate\tdup\tp50\tmax\tnotes")
	for _, s := range r.Scenarios {
		p50, maxLat := "-", "-"
		if s.Answered > 0 {
			p50, maxLat = bench.Short(time.Duration(s.P50us*1e3)), bench.Short(time.Duration(s.MaxUs*1e3))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", s.Name, s.Sent, s.Answered, s.Failed, s.Lost, s.Late, s.Duplicate, p50, maxLat, s.Note)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "target\tvalue\tgoal\t")
	for _, g := range r.Goals {
		state := "met"
		if !g.Met {
			state = "NOT MET"
		}
		fmt.Fprintf(tw, "%s\t%.4g\t%s %g\t%s\n", g.Name, g.Value, g.Op, g.Goal, state)
	}
	return tw.Flush()
}

// goal records a target and how the run fared.
func (f *faults) goal(name string, value float64, op string, target float64, measured bool) {
	met := measured
	switch op {
	case "<=":
		met = met && value <= target
	case ">=":
		met = met && value >= target
	}
	f.goals = append(f.goals, bench.Goal{Name: name, Value: value, Op: op, Goal: target, Met: met})
}

// The open-loop client.
