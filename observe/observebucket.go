package observe

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/schemas"
)

// The metrics of the gateway's Observe bucket (gateway.ObserveBucket),
// and of the registrations read back from it.
var (
	descObserveRestored = prometheus.NewDesc("udpgate_coap_observe_restored_total",
		"CoAP Observe registrations a coap listener restored at its start, read back from the Observe bucket.", []string{"port"}, nil)
	descObserveHeld = prometheus.NewDesc("udpgate_observe_bucket_registrations",
		"CoAP Observe registrations this node holds in the Observe bucket (UDPGATE_OBSERVE_BUCKET).", nil, nil)
	descObserveWrites = prometheus.NewDesc("udpgate_observe_bucket_writes_total",
		"Writes to the Observe bucket, by outcome: put and delete (done), failed (refused or not acknowledged), dropped (not tried: the queue was full).", []string{"outcome"}, nil)
	descObserveRefreshes = prometheus.NewDesc("udpgate_observe_bucket_refreshes_total",
		"Registrations written to the Observe bucket again, every quarter of UDPGATE_OBSERVE_TTL, so that the TTL does not remove them.", nil, nil)
	descObserveLoaded = prometheus.NewDesc("udpgate_observe_bucket_loaded_total",
		"Registrations read back from the Observe bucket by coap listeners starting, by outcome: loaded (registrations), failed (listener starts whose reading failed).", []string{"outcome"}, nil)
)

var observeBucketDescs = []*prometheus.Desc{descObserveRestored, descObserveHeld, descObserveWrites, descObserveRefreshes, descObserveLoaded}

// collectObserveBucket sends the Observe bucket's metrics of st: none
// when the node keeps registrations in memory only, but for the
// listeners' restored counts.
func collectObserveBucket(ch chan<- prometheus.Metric, st gateway.Stats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, cs := range st.CoAP {
		p, _, _ := schemas.ParseListener(name)
		counter(descObserveRestored, cs.Observe.Restored, strconv.Itoa(int(p)))
	}
	o := st.Observe
	if o.Bucket == "" {
		return
	}
	ch <- prometheus.MustNewConstMetric(descObserveHeld, prometheus.GaugeValue, float64(o.Held))
	counter(descObserveWrites, o.Puts, "put")
	counter(descObserveWrites, o.Deletes, "delete")
	counter(descObserveWrites, o.Failed, "failed")
	counter(descObserveWrites, o.Dropped, "dropped")
	counter(descObserveRefreshes, o.Refreshes)
	counter(descObserveLoaded, o.Loaded, "loaded")
	counter(descObserveLoaded, o.LoadFailed, "failed")
}
