package schemas

import (
	"path"
	"regexp"
	"strings"
	"testing"
)

// kvKey is what a JetStream KV key may hold.
var kvKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func TestObserveKey(t *testing.T) {
	for _, tt := range []struct {
		name, node, subject, peer string
		token                     []byte
	}{
		{"a resource", "node-1", "udpgate.notify.5683.sensors.1", "127.0.0.1:40000", []byte{0x42}},
		{"the resource /", "gw.example:1", "udpgate.notify.5683", "[fe80::1%eth0]:5683", nil},
		{"any bytes", "ü ~", "p.notify.5683.a~20b", "[2001:db8::1]:1", []byte{0, '.', 0xff, 1, 2, 3, 4, 5}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := ObserveKey(5683, tt.node, tt.subject, tt.peer, tt.token)
			if !kvKey.MatchString(key) || strings.Count(key, ".") != 3 {
				t.Fatalf("key %q: not four tokens of a KV key", key)
			}
			port, node, subject, ok := ParseObserveKey(key)
			if !ok || port != 5683 || node != tt.node || subject != tt.subject {
				t.Fatalf("ParseObserveKey(%q) = %d %q %q %v", key, port, node, subject, ok)
			}
			// The filters, as NATS matches them token by token.
			match := func(filter string) bool {
				ok, _ := path.Match(strings.ReplaceAll(filter, ".", "/"), strings.ReplaceAll(key, ".", "/"))
				return ok
			}
			if !match(ObserveResourceFilter(5683, tt.subject)) || !match(ObserveNodeFilter(5683, tt.node)) {
				t.Fatalf("key %q does not match its filters", key)
			}
			if match(ObserveResourceFilter(5684, tt.subject)) || match(ObserveResourceFilter(5683, tt.subject+".x")) ||
				match(ObserveNodeFilter(5683, tt.node+"x")) {
				t.Fatalf("key %q matches another's filter", key)
			}
		})
	}
	for _, bad := range []string{"", "5683", "x.a.b.c", "5683.a.b", "5683.a.b.c.d", "5683.!.b.c", "70000.a.b.c"} {
		if _, _, _, ok := ParseObserveKey(bad); ok {
			t.Errorf("ParseObserveKey(%q) ok", bad)
		}
	}
}
