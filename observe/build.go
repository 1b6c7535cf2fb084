package observe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/internal/version"
)

// RegisterBuild registers udpgate_build_info, 1 with the version, commit
// and Go version of this binary as labels, as Prometheus's own
// prometheus_build_info: join it to other series to see which version
// runs where.
func RegisterBuild(reg prometheus.Registerer) error {
	v := version.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "udpgate_build_info",
		Help:        "Always 1; the labels say which udpgate this process runs.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "goversion": v.GoVersion},
	})
	g.Set(1)
	return reg.Register(g)
}
