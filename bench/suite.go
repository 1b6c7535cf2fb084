package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Sample is one measurement of a suite case.
type Sample struct {
	Rate     float64 // answered (or stored) per second
	P50, P99 time.Duration
	Sent     int64
	Lost     int64
	Errors   int64
	// Extra holds a case's own figures, such as memory in MiB.
	Extra map[string]float64
}

// SampleOf returns the Sample of a run.
func SampleOf(res Result) Sample {
	return Sample{Rate: res.Rate, P50: res.Latency.P50, P99: res.Latency.P99, Sent: res.Sent, Lost: res.Lost, Errors: res.Errors}
}

// Case is a suite case: the median of each figure over its repetitions.
type Case struct {
	Name   string  `json:"name"`
	Rate   float64 `json:"rate"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	Lost   int64   `json:"lost"`
	Sent   int64   `json:"sent"`
	Errors int64   `json:"errors"`
	// Rates are the repetitions' rates, in order.
	Rates []float64          `json:"rates"`
	Extra map[string]float64 `json:"extra,omitempty"`
	Note  string             `json:"note,omitempty"`
	// Skipped is set when the case could not run here (its peer is not
	// installed): it has no figures, and Note says why.
	Skipped bool `json:"skipped,omitempty"`
}

// Summarize returns the case named name from its samples: the median of
// each figure separately (the lower middle one for an even count).
func Summarize(name string, samples []Sample) Case {
	c := Case{Name: name}
	if len(samples) == 0 {
		return c
	}
	pick := func(f func(Sample) float64) float64 {
		v := make([]float64, len(samples))
		for i, s := range samples {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[(len(v)-1)/2]
	}
	c.Rate = pick(func(s Sample) float64 { return s.Rate })
	c.P50us = pick(func(s Sample) float64 { return float64(s.P50.Nanoseconds()) / 1e3 })
	c.P99us = pick(func(s Sample) float64 { return float64(s.P99.Nanoseconds()) / 1e3 })
	c.Lost = int64(pick(func(s Sample) float64 { return float64(s.Lost) }))
	c.Sent = int64(pick(func(s Sample) float64 { return float64(s.Sent) }))
	c.Errors = int64(pick(func(s Sample) float64 { return float64(s.Errors) }))
	for _, s := range samples {
		c.Rates = append(c.Rates, s.Rate)
	}
	// Every figure any sample has; a sample without it counts as 0.
	for _, s := range samples {
		for k := range s.Extra {
			if _, done := c.Extra[k]; done {
				continue
			}
			if c.Extra == nil {
				c.Extra = map[string]float64{}
			}
			c.Extra[k] = pick(func(s Sample) float64 { return s.Extra[k] })
		}
	}
	return c
}

// Goal is one of the suite's targets (issue 15) and how a run fared.
type Goal struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Op    string  `json:"op"` // ">=", "<=" or "<"
	Goal  float64 `json:"goal"`
	Met   bool    `json:"met"`
	// Note says why a goal could not be measured (a case it needs was
	// skipped); Value is then 0 and Met false.
	Note string `json:"note,omitempty"`
}

// ratioGoals are the suite's ratios: a figure of one case over the same
// figure of its baseline, with the target of issue 15 where there is one
// (op "" for a ratio reported for information only).
var ratioGoals = []struct {
	key, num, den, figure, op string
	goal                      float64
}{
	{"gateway-raw/udp-echo", "gateway-raw", "udp-echo", "rate", ">=", 0.4},
	{"gateway-raw/nginx-udp", "gateway-raw", "nginx-udp", "rate", ">=", 1.5},
	{"gateway-raw-n1.p50/udp-echo-n1.p50", "gateway-raw-n1", "udp-echo-n1", "p50", "<=", 5},
	{"gateway-raw-n1.p50/nginx-udp-n1.p50", "gateway-raw-n1", "nginx-udp-n1", "p50", "", 0},
	{"gateway-coap-short/coap-direct-short", "gateway-coap-short", "coap-direct-short", "rate", ">=", 1},
	{"gateway-coap-long/coap-direct-long", "gateway-coap-long", "coap-direct-long", "rate", ">=", 5},
	{"gateway-ingest/js-publish", "gateway-ingest", "js-publish", "rate", ">=", 0.8},
	{"gateway-raw-durable/udp-echo", "gateway-raw-durable", "udp-echo", "rate", ">=", 0.15},
	{"gateway-raw-durable-n1.p50/udp-echo-n1.p50", "gateway-raw-durable-n1", "udp-echo-n1", "p50", "", 0},
	// The same calls over WebSocket as over UDP.
	{"gateway-ws/gateway-rpc", "gateway-ws", "gateway-rpc", "rate", ">=", 0.8},
	// CoAP notifications delivered to observers against CoAP requests
	// answered, per second.
	{"gateway-observe/gateway-coap-long", "gateway-observe", "gateway-coap-long", "rate", "", 0},
}

// noLossGoals are the no-loss checks: each case's lost, which must be 0.
var noLossGoals = []string{"gateway-raw-open80", "gateway-raw-durable-open80"}

// RatioKeys returns the keys of Report.Ratios, in order.
func RatioKeys() []string {
	var keys []string
	for _, g := range ratioGoals {
		keys = append(keys, g.key)
	}
	return keys
}

// RatioCases returns the two cases of the ratio key (numerator, then
// denominator), or false if there is no such ratio.
func RatioCases(key string) (num, den string, ok bool) {
	for _, g := range ratioGoals {
		if g.key == key {
			return g.num, g.den, true
		}
	}
	return "", "", false
}

// Report is the suite's outcome.
type Report struct {
	Cases  []Case             `json:"cases"`
	Ratios map[string]float64 `json:"ratios"`
	Goals  []Goal             `json:"goals"`
	// Machine describes where the suite ran.
	Machine map[string]any `json:"machine,omitempty"`
}

// NewReport computes the ratios and goals of cases. A ratio whose cases
// were not both selected (or whose baseline is zero) is left out; a goal
// whose case was skipped is reported, not met, with a note.
func NewReport(cases []Case) Report {
	r := Report{Cases: cases, Ratios: map[string]float64{}}
	byName := map[string]Case{}
	for _, c := range cases {
		byName[c.Name] = c
	}
	met := func(v float64, op string, goal float64) bool {
		switch op {
		case ">=":
			return v >= goal
		case "<=":
			return v <= goal
		default:
			return v < goal
		}
	}
	for _, g := range ratioGoals {
		n, ok1 := byName[g.num]
		d, ok2 := byName[g.den]
		if !ok1 || !ok2 {
			continue
		}
		if n.Skipped || d.Skipped {
			if g.op != "" {
				r.Goals = append(r.Goals, Goal{Name: g.key, Op: g.op, Goal: g.goal, Note: skipNote(n, d)})
			}
			continue
		}
		nv, dv := n.Rate, d.Rate
		if g.figure == "p50" {
			nv, dv = n.P50us, d.P50us
		}
		if dv == 0 {
			continue
		}
		v := nv / dv
		r.Ratios[g.key] = v
		if g.op != "" {
			r.Goals = append(r.Goals, Goal{Name: g.key, Value: v, Op: g.op, Goal: g.goal, Met: met(v, g.op, g.goal)})
		}
	}
	for _, name := range noLossGoals {
		c, ok := byName[name]
		if !ok {
			continue
		}
		g := Goal{Name: name + " lost", Value: float64(c.Lost), Op: "<=", Goal: 0, Met: c.Lost == 0 && c.Sent > 0}
		if c.Skipped {
			g.Value, g.Note = 0, skipNote(c)
		}
		r.Goals = append(r.Goals, g)
	}
	if c, ok := byName["gateway-memory"]; ok {
		v := c.Extra["rss_mib"]
		r.Goals = append(r.Goals, Goal{Name: "gateway-memory rss_mib", Value: v, Op: "<", Goal: 200, Met: met(v, "<", 200)})
	}
	return r
}

// skipNote names the skipped cases among cases and why.
func skipNote(cases ...Case) string {
	var parts []string
	for _, c := range cases {
		if c.Skipped {
			parts = append(parts, c.Name+" skipped: "+c.Note)
		}
	}
	return strings.Join(parts, "; ")
}

// WriteJSON writes r as one JSON object and a newline.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes r as two tables: the cases, then the goals.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\treq/s\tp50\tp99\tlost\tsent\t")
	for _, c := range r.Cases {
		if c.Skipped {
			fmt.Fprintf(tw, "%s\tskipped\t-\t-\t-\t-\t\n", c.Name)
			continue
		}
		p50, p99 := "-", "-"
		if c.P50us > 0 {
			p50, p99 = Short(time.Duration(c.P50us*1e3)), Short(time.Duration(c.P99us*1e3))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", c.Name, group(c.Rate), p50, p99, group(float64(c.Lost)), group(float64(c.Sent)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range r.Cases {
		if c.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", c.Name, c.Note)
		}
	}
	if len(r.Goals) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "target\tvalue\tgoal\t")
		for _, g := range r.Goals {
			if g.Note != "" {
				fmt.Fprintf(tw, "%s\t-\t%s %g\tnot measured (%s)\n", g.Name, g.Op, g.Goal, g.Note)
				continue
			}
			state := "not met"
			if g.Met {
				state = "met"
			}
			fmt.Fprintf(tw, "%s\t%.3g\t%s %g\t%s\n", g.Name, g.Value, g.Op, g.Goal, state)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	// Ratios without a target, for information, even when no goal's
	// cases ran.
	var info []string
	for _, g := range ratioGoals {
		if v, ok := r.Ratios[g.key]; ok && g.op == "" {
			info = append(info, fmt.Sprintf("%s %.3g", g.key, v))
		}
	}
	if len(info) > 0 {
		_, err := fmt.Fprintf(w, "\nalso: %s\n", strings.Join(info, ", "))
		return err
	}
	return nil
}
