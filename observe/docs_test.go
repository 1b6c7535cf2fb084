package observe

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/bridge"
	"github.com/udpgate/udpgate/gateway"
)

// TestMetricsDocumented: docs/metrics.md has a row for every metric of
// the gateway, the listener file, the NATS connection, the workers, the
// Lambda bridge and the leased listeners (package bridge), naming its labels (in the row, or above the
// section's table).
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 256)
	for _, c := range []prometheus.Collector{
		gatewayCollector{&gateway.Gateway{}}, listenerFileCollector{}, natsCollector{}, workersCollector{}, lambdaCollector{},
	} {
		c.Describe(ch)
	}
	bridge.Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	labels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	n := 0
	for d := range ch {
		s := d.String()
		metric := name.FindStringSubmatch(s)[1]
		i := strings.Index(string(doc), "| `"+metric+"` |")
		if i < 0 {
			t.Errorf("docs/metrics.md has no row for %s", metric)
			continue
		}
		n++
		row, _, _ := strings.Cut(string(doc[i:]), "\n")
		// A label is named in the row, or for the whole section above it.
		section := string(doc[strings.LastIndex(string(doc[:i]), "\n## "):i])
		section, _, _ = strings.Cut(section, "\n|")
		if m := labels.FindStringSubmatch(s); m != nil && m[1] != "" {
			for _, l := range strings.Split(m[1], ",") {
				if l = strings.TrimSpace(l); !strings.Contains(row, l) && !strings.Contains(section, "`"+l+"`") {
					t.Errorf("docs/metrics.md: the row of %s does not name its label %s", metric, l)
				}
			}
		}
	}
	if n < 50 {
		t.Fatalf("%d metrics described, fewer than expected", n)
	}
}
