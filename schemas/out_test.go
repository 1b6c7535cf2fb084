package schemas

import "testing"

func TestOutSubject(t *testing.T) {
	for _, tt := range []struct {
		node string
		port uint16
		want string
	}{
		{"gw-1", 9000, "udpgate.out.gw-1.9000"},
		{"gw.eu", 5, "udpgate.out.gw~2Eeu.5"},
	} {
		if got := OutSubject(DefaultPrefix, tt.node, tt.port); got != tt.want {
			t.Errorf("OutSubject(%q, %d) = %q, want %q", tt.node, tt.port, got, tt.want)
		}
	}
	if got := OutWildcard("p"); got != "p.out.>" {
		t.Errorf("OutWildcard = %q", got)
	}
}
