package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestSummarizeMedian(t *testing.T) {
	c := Summarize("x", []Sample{
		{Rate: 30, P50: 3 * time.Microsecond, Lost: 1},
		{Rate: 10, P50: 9 * time.Microsecond, Lost: 0},
		{Rate: 20, P50: 1 * time.Microsecond, Lost: 5},
	})
	if c.Rate != 20 || c.P50us != 3 || c.Lost != 1 || len(c.Rates) != 3 || c.Rates[0] != 30 {
		t.Errorf("%+v", c)
	}
	// A figure some samples lack counts as 0 in those.
	c = Summarize("x", []Sample{
		{Rate: 1},
		{Rate: 2, Extra: map[string]float64{"dropped": 4, "bytes": 400}},
		{Rate: 3, Extra: map[string]float64{"dropped": 6, "bytes": 390}},
	})
	if c.Extra["dropped"] != 4 || c.Extra["bytes"] != 390 || len(c.Extra) != 2 {
		t.Errorf("extra %v", c.Extra)
	}
}

func TestReport(t *testing.T) {
	r := NewReport([]Case{
		{Name: "udp-echo", Rate: 100, P50us: 10},
		{Name: "udp-echo-n1", Rate: 50, P50us: 10},
		{Name: "nginx-udp", Rate: 40, P50us: 300},
		{Name: "nginx-udp-n1", Rate: 20, P50us: 40},
		{Name: "gateway-raw", Rate: 50, P50us: 100},
		{Name: "gateway-raw-n1", Rate: 5, P50us: 80},
		{Name: "gateway-raw-durable", Rate: 10, P50us: 1000},
		{Name: "gateway-raw-open80", Sent: 10, Lost: 0},
		{Name: "gateway-raw-durable-open80", Sent: 10, Lost: 1},
		{Name: "gateway-memory", Extra: map[string]float64{"rss_mib": 250}},
	})
	wantRatios := map[string]float64{
		"gateway-raw/udp-echo": 0.5, "gateway-raw/nginx-udp": 1.25,
		"gateway-raw-n1.p50/udp-echo-n1.p50": 8, "gateway-raw-n1.p50/nginx-udp-n1.p50": 2,
		"gateway-raw-durable/udp-echo": 0.1,
	}
	if len(r.Ratios) != len(wantRatios) {
		t.Errorf("ratios %v, want %v", r.Ratios, wantRatios)
	}
	for k, v := range wantRatios {
		if r.Ratios[k] != v {
			t.Errorf("ratio %s = %v, want %v", k, r.Ratios[k], v)
		}
	}
	met := map[string]bool{}
	for _, g := range r.Goals {
		met[g.Name] = g.Met
	}
	want := map[string]bool{
		"gateway-raw/udp-echo": true, "gateway-raw/nginx-udp": false,
		"gateway-raw-n1.p50/udp-echo-n1.p50": false, "gateway-raw-durable/udp-echo": false,
		"gateway-raw-open80 lost": true, "gateway-raw-durable-open80 lost": false,
		"gateway-memory rss_mib": false,
	}
	if len(met) != len(want) {
		t.Errorf("goals %+v", r.Goals)
	}
	for k, v := range want {
		if met[k] != v {
			t.Errorf("goal %s met = %v, want %v", k, met[k], v)
		}
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"not met", "gateway-raw-n1", "gateway-raw/nginx-udp", "also: gateway-raw-n1.p50/nginx-udp-n1.p50 2"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, text.String())
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Cases  []map[string]any   `json:"cases"`
		Ratios map[string]float64 `json:"ratios"`
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Cases) != 10 {
		t.Fatalf("%v: %s", err, js.String())
	}
	for _, k := range []string{"name", "rate", "p50_us", "p99_us", "lost"} {
		if _, ok := back.Cases[0][k]; !ok {
			t.Errorf("case lacks %q", k)
		}
	}
}

// TestReportSkipped: a goal whose case was skipped is reported, not met,
// with the reason; its ratio is left out.
func TestReportSkipped(t *testing.T) {
	r := NewReport([]Case{
		{Name: "udp-echo", Rate: 100, P50us: 10},
		{Name: "nginx-udp", Skipped: true, Note: "nginx: not found"},
		{Name: "nginx-udp-n1", Skipped: true, Note: "nginx: not found"},
		{Name: "gateway-raw", Rate: 50, P50us: 100},
		{Name: "gateway-raw-n1", Rate: 5, P50us: 80},
	})
	if _, ok := r.Ratios["gateway-raw/nginx-udp"]; ok || len(r.Ratios) != 1 {
		t.Errorf("ratios %v", r.Ratios)
	}
	var found bool
	for _, g := range r.Goals {
		if g.Name == "gateway-raw/nginx-udp" {
			found = true
			if g.Met || !strings.Contains(g.Note, "nginx-udp skipped: nginx: not found") {
				t.Errorf("goal %+v", g)
			}
		}
	}
	if !found || len(r.Goals) != 2 {
		t.Errorf("goals %+v", r.Goals)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"nginx-udp  skipped", "not measured (nginx-udp skipped: nginx: not found)", "nginx-udp: nginx: not found"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, text.String())
		}
	}
}

// TestReportInfoRatioAlone: a ratio without a target is computed and
// printed even when no case of a goal ran.
func TestReportInfoRatioAlone(t *testing.T) {
	r := NewReport([]Case{
		{Name: "gateway-coap-long", Rate: 20000, P50us: 2000},
		{Name: "gateway-observe", Rate: 100000, P50us: 20000},
	})
	if v := r.Ratios["gateway-observe/gateway-coap-long"]; v != 5 || len(r.Goals) != 0 {
		t.Errorf("ratios %v, goals %+v", r.Ratios, r.Goals)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if want := "also: gateway-observe/gateway-coap-long 5"; !strings.Contains(text.String(), want) {
		t.Errorf("text lacks %q:\n%s", want, text.String())
	}
}

func TestShort(t *testing.T) {
	for d, want := range map[time.Duration]string{
		500: "500ns", 45200: "45.2µs", 1234567: "1.23ms", 2500 * time.Millisecond: "2.50s", 150 * time.Microsecond: "150µs",
	} {
		if got := Short(d); got != want {
			t.Errorf("Short(%v) = %q, want %q", d, got, want)
		}
	}
	if got := group(1234567.4); got != "1,234,567" {
		t.Errorf("group: %q", got)
	}
}
