package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram counts latencies in log-linear buckets: exact below 128 ns,
// then 64 buckets per power of two, so a bucket is at most 1/64 (1.6%)
// wide relative to its values. It covers up to 2^42 ns (about 73 minutes);
// longer values land in the last bucket. The exact minimum and maximum are
// kept alongside. The zero value is empty and ready. A Histogram is not
// safe for concurrent use: Run's sockets each record into their own, and
// Run merges them.
type Histogram struct {
	counts   [histBuckets]uint64
	n        uint64
	min, max time.Duration
}

const (
	histSub     = 64 // buckets per power of two above histLinear
	histLinear  = 2 * histSub
	histMaxExp  = 42
	histBuckets = histLinear + (histMaxExp-7)*histSub
)

// bucket returns the index of v's bucket.
func bucket(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	e := bits.Len64(v) - 7 // v >> e is in [64, 128)
	i := histLinear + (e-1)*histSub + int(v>>uint(e)) - histSub
	return min(i, histBuckets-1)
}

// lowest returns the smallest value of bucket i.
func lowest(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	e := (i-histLinear)/histSub + 1
	m := uint64((i-histLinear)%histSub + histSub)
	return m << uint(e)
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucket(uint64(d))]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
}

// Merge adds o's latencies to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
}

// Quantile returns the nearest-rank q-quantile (0 < q <= 1): the lowest
// value of the bucket holding the ceil(q*n)-th smallest latency, clamped
// to [min, max]. It is 0 for an empty Histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := time.Duration(lowest(i))
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}

// Count returns the number of latencies recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Latency returns the percentiles and extremes of h.
func (h *Histogram) Latency() Latency {
	return Latency{
		Min: h.min, Max: h.max,
		P50: h.Quantile(0.50), P90: h.Quantile(0.90), P99: h.Quantile(0.99), P999: h.Quantile(0.999),
	}
}
