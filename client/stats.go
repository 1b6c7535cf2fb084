package client

import (
	"slices"
	"time"
)

// Stats summarises a run of exchanges, as ping does.
type Stats struct {
	// Sent is the number of requests (not copies) sent; Received the number
	// that got a valid reply.
	Sent, Received int
	// The latencies of the received replies: nearest-rank percentiles.
	// All zero when nothing was received.
	Min, P50, P90, P99, Max time.Duration
}

// Summarize returns the Stats of sent requests of which the ones in
// latencies got a reply. It does not modify latencies.
func Summarize(sent int, latencies []time.Duration) Stats {
	s := Stats{Sent: sent, Received: len(latencies)}
	if len(latencies) == 0 {
		return s
	}
	sorted := slices.Clone(latencies)
	slices.Sort(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	s.P50, s.P90, s.P99 = percentile(sorted, 50), percentile(sorted, 90), percentile(sorted, 99)
	return s
}

// percentile returns the nearest-rank p-th percentile of sorted: the
// smallest value with at least p% of the values at or below it.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

// Loss returns the percentage of requests without a reply, 0 if none was
// sent.
func (s Stats) Loss() float64 {
	if s.Sent == 0 {
		return 0
	}
	return 100 * float64(s.Sent-s.Received) / float64(s.Sent)
}
