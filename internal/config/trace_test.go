package config

import "testing"

func TestConfigTraceSample(t *testing.T) {
	tests := []struct {
		name, value string
		want        float64
		bad         string // part of the error; "" for none
	}{
		{name: "default: off", value: "0", want: 0},
		{name: "a share", value: "0.01", want: 0.01},
		{name: "every request", value: "1", want: 1},
		{name: "spaces", value: " 0.5 ", want: 0.5},
		{name: "above one", value: "1.5", bad: `UDPGATE_TRACE_SAMPLE: "1.5" is not a share of requests from 0 to 1`},
		{name: "negative", value: "-0.1", bad: `UDPGATE_TRACE_SAMPLE: "-0.1" is not a share`},
		{name: "percentage", value: "10%", bad: `UDPGATE_TRACE_SAMPLE: "10%" is not a share`},
		{name: "not a number", value: "NaN", bad: `UDPGATE_TRACE_SAMPLE: "NaN" is not a share`},
		{name: "empty", value: "", bad: `UDPGATE_TRACE_SAMPLE: "" is not a share`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaults(t)
			if e.TraceSample != "0" {
				t.Fatalf("default %q, want 0", e.TraceSample)
			}
			e.TraceSample = tt.value
			c, ok := parseWant(t, e, tt.bad)
			if !ok {
				return
			}
			if c.TraceSample != tt.want {
				t.Errorf("TraceSample %v, want %v", c.TraceSample, tt.want)
			}
		})
	}
}
