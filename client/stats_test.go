package client_test

import (
	"testing"
	"time"

	"github.com/udpgate/udpgate/client"
)

func TestSummarize(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var d []time.Duration
		for _, n := range ns {
			d = append(d, time.Duration(n)*time.Millisecond)
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1 ms, unsorted
	}
	tests := []struct {
		name      string
		sent      int
		latencies []time.Duration
		want      client.Stats
		loss      float64
	}{
		{"nothing sent", 0, nil, client.Stats{}, 0},
		{"all lost", 4, nil, client.Stats{Sent: 4}, 100},
		{"one", 1, ms(7), client.Stats{Sent: 1, Received: 1, Min: ms(7)[0], P50: ms(7)[0], P90: ms(7)[0], P99: ms(7)[0], Max: ms(7)[0]}, 0},
		{"four of five", 5, ms(4, 1, 3, 2), client.Stats{Sent: 5, Received: 4,
			Min: ms(1)[0], P50: ms(2)[0], P90: ms(4)[0], P99: ms(4)[0], Max: ms(4)[0]}, 20},
		{"one to a hundred", 100, ms(hundred...), client.Stats{Sent: 100, Received: 100,
			Min: ms(1)[0], P50: ms(50)[0], P90: ms(90)[0], P99: ms(99)[0], Max: ms(100)[0]}, 0},
		{"ten", 10, ms(10, 20, 30, 40, 50, 60, 70, 80, 90, 1000), client.Stats{Sent: 10, Received: 10,
			Min: ms(10)[0], P50: ms(50)[0], P90: ms(90)[0], P99: ms(1000)[0], Max: ms(1000)[0]}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.latencies...)
			got := client.Summarize(tt.sent, tt.latencies)
			if got != tt.want {
				t.Errorf("Summarize = %+v, want %+v", got, tt.want)
			}
			if got.Loss() != tt.loss {
				t.Errorf("Loss = %v, want %v", got.Loss(), tt.loss)
			}
			for i := range in {
				if in[i] != tt.latencies[i] {
					t.Fatal("Summarize reordered its argument")
				}
			}
		})
	}
}
