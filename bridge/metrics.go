package bridge

import "github.com/prometheus/client_golang/prometheus"

var (
	descBindings = prometheus.NewDesc("udpgate_bridge_bindings",
		"Leased listeners alive on this node, by the API that created them.", []string{"kind"}, nil)
	descBindingsMax = prometheus.NewDesc("udpgate_bridge_bindings_max",
		"The most leased listeners this node holds at once (UDPGATE_BRIDGE_MAX_BINDINGS); 0 when leases are off.", nil, nil)
	descCreated = prometheus.NewDesc("udpgate_bridge_bindings_created_total",
		"Leased listeners created, by the API that created them.", []string{"kind"}, nil)
	descDatagrams = prometheus.NewDesc("udpgate_bridge_datagrams_total",
		"Datagrams leased listeners received (in) and sent through the API (out).", []string{"kind", "direction"}, nil)
	descBytes = prometheus.NewDesc("udpgate_bridge_bytes_total",
		"Payload bytes leased listeners received (in) and sent through the API (out).", []string{"kind", "direction"}, nil)
	descSSEClients = prometheus.NewDesc("udpgate_bridge_sse_clients",
		"Server-Sent Event streams of leased listeners open now.", nil, nil)
	descSSEDropped = prometheus.NewDesc("udpgate_bridge_sse_dropped_total",
		"Datagrams an SSE stream had no room for (its reader fell behind by more than 256); the capture and NATS still have them.", nil, nil)
	descReaped = prometheus.NewDesc("udpgate_bridge_leases_reaped_total",
		"Leased listeners closed because their lease ran out without a heartbeat.", nil, nil)
	descRefused = prometheus.NewDesc("udpgate_bridge_refused_total",
		"Requests of the bridge's API refused or failed, by API and reason.", []string{"kind", "reason"}, nil)
)

// Register registers the bridge's metrics with reg; they read its
// counters at scrape time.
func (b *Bridge) Register(reg prometheus.Registerer) error {
	b.init()
	return reg.Register(collector{b})
}

type collector struct{ b *Bridge }

func (c collector) Describe(ch chan<- *prometheus.Desc) { Describe(ch) }

// Describe sends the description of every metric of the bridge (for
// docs/metrics.md's test in observe).
func Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBindings, descBindingsMax, descCreated, descDatagrams, descBytes,
		descSSEClients, descSSEDropped, descReaped, descRefused} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	b := c.b
	var live [len(kinds)]int
	b.mu.Lock()
	for _, bd := range b.bindings {
		live[kindIndex(bd.kind)]++
	}
	b.mu.Unlock()
	max := 0
	if b.Config.On() {
		max = b.maxBindings()
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descBindingsMax, float64(max))
	for i, kind := range kinds {
		st := &b.stats[i]
		gauge(descBindings, float64(live[i]), kind)
		counter(descCreated, st.created.Load(), kind)
		counter(descDatagrams, st.inPackets.Load(), kind, "in")
		counter(descDatagrams, st.outPackets.Load(), kind, "out")
		counter(descBytes, st.inBytes.Load(), kind, "in")
		counter(descBytes, st.outBytes.Load(), kind, "out")
		for r := range numReasons {
			counter(descRefused, b.refused[i][r].Load(), kind, reasons[r].name)
		}
	}
	gauge(descSSEClients, float64(b.readers.Load()))
	counter(descSSEDropped, b.sseDrops.Load())
	counter(descReaped, b.reaped.Load())
}
