package gateway

import (
	"testing"

	"github.com/udpgate/udpgate/coap/linkformat"
)

func TestOverlaps(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"udpgate.in.5683.GET.time", "udpgate.in.5683.>", true},
		{"udpgate.in.5683", "udpgate.in.5683.>", false},
		{"udpgate.in.5683", "udpgate.in.5683", true},
		{"udpgate.in.*", "udpgate.in.5683", true},
		{"udpgate.in.>", "udpgate.in.5683", true},
		{"udpgate.in.>", "udpgate.in", false},
		{"udpgate.in.7000.*.*", "udpgate.in.5683.>", false},
		{"udpgate.in.*.GET.>", "udpgate.in.5683.*.time", true},
		{"other.in.5683", "udpgate.in.5683", false},
	} {
		if got := overlaps(tt.a, tt.b); got != tt.want {
			t.Errorf("overlaps(%q, %q) = %v", tt.a, tt.b, got)
		}
		if got := overlaps(tt.b, tt.a); got != tt.want {
			t.Errorf("overlaps(%q, %q) = %v", tt.b, tt.a, got)
		}
	}
}

func TestConcretePath(t *testing.T) {
	for _, tt := range []struct {
		subject, want string
		ok            bool
	}{
		{"udpgate.in.5683.GET.time", "/time", true},
		{"udpgate.in.5683.*.sensors.a", "/sensors/a", true},
		{"udpgate.in.5683.GET", "/", true},
		{"udpgate.in.5683.GET.sensors.*", "", false},
		{"udpgate.in.5683.GET.>", "", false},
		{"udpgate.in.5683.>", "", false},
		{"udpgate.in.5684.GET.time", "", false},
		{"udpgate.in.5683.GET.~2Ewell-known.core", "", false}, // discovery itself is never a resource
	} {
		got, ok := concretePath(tt.subject, "udpgate", 5683)
		if got != tt.want || ok != tt.ok {
			t.Errorf("concretePath(%q) = %q, %v; want %q, %v", tt.subject, got, ok, tt.want, tt.ok)
		}
	}
}

func TestResources(t *testing.T) {
	groups := []Group{
		{Name: "a", Subjects: []string{"udpgate.in.5683.GET.sensors.*"}, links: linkformat.Parse(`</sensors/1>;rt=temp,</elsewhere>;rt=x`)},
		{Name: "b", Subjects: []string{"udpgate.in.5683.POST.reverse", "udpgate.in.9000"}},
		{Name: "c", Subjects: []string{"udpgate.in.5684.GET.time"}, links: linkformat.Parse(`</time>`)},
	}
	got := linkformat.Format(resources("udpgate", 5683, groups, []string{"udpgate.in.5683.PUT.archive", "udpgate.in.>"}))
	// /elsewhere is not on a subject of a; c serves another port.
	if want := `</archive>,</reverse>,</sensors/1>;rt=temp`; got != want {
		t.Errorf("resources = %s, want %s", got, want)
	}
}
