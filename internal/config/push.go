package config

import (
	"net/netip"
	"strings"
	"time"

	"github.com/udpgate/udpgate/guard"
)

// Push configures the unsolicited datagrams of raw listeners with the
// option push=on (gateway.Push).
type Push struct {
	Window time.Duration  // a source stays a peer this long after its last datagram
	Allow  []netip.Prefix // destinations that need not have sent
	Rate   float64        // datagrams per second per destination; 0: no limit
}

// parsePush checks the push variables and reports each bad one through
// bad.
func (e env) parsePush(bad func(name, format string, args ...any)) Push {
	var p Push
	if d, err := time.ParseDuration(strings.TrimSpace(e.PushWindow)); err != nil || d < time.Second {
		bad("PUSH_WINDOW", "%q is not a duration of at least 1s (like 5m)", e.PushWindow)
	} else {
		p.Window = d
	}
	if ps, err := guard.ParsePrefixes(e.PushAllow); err != nil {
		bad("PUSH_ALLOW", "%v", err)
	} else {
		p.Allow = ps
	}
	if err := parseRate("rate", e.PushRate, &p.Rate); err != nil {
		bad("PUSH_RATE", "%q is not a rate between 0 (no limit) and 1e9 per second", e.PushRate)
	}
	return p
}

// pushOn reports whether checked listener options say push=on.
func pushOn(opts string) bool {
	for _, kv := range strings.Split(opts, ";") {
		key, value, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(key) == "push" && strings.TrimSpace(value) == "on" {
			return true
		}
	}
	return false
}
