package bridge

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsDocumented: docs/metrics.md lists every metric of the
// bridge, with its labels.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc, 32)
	collector{&Bridge{}}.Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	labels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	n := 0
	for d := range ch {
		s := d.String()
		metric := name.FindStringSubmatch(s)[1]
		want := "| `" + metric + "` |"
		i := strings.Index(string(doc), want)
		if i < 0 {
			t.Errorf("docs/metrics.md has no row for %s", metric)
			continue
		}
		n++
		row, _, _ := strings.Cut(string(doc[i:]), "\n")
		if m := labels.FindStringSubmatch(s); m != nil && m[1] != "" {
			for _, l := range strings.Split(m[1], ",") {
				if !strings.Contains(row, strings.TrimSpace(l)) {
					t.Errorf("docs/metrics.md: the row of %s does not name its label %s", metric, l)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no metric described")
	}
}
