package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

// parseGuard checks the guard variables, every listener's defaults, and
// reports each bad one through bad.
func (e env) parseGuard(bad func(name, format string, args ...any)) guard.Config {
	var c guard.Config
	set := func(name, key, value string) {
		if err := setGuard(&c, key, value); err != nil {
			bad(name, "%v", err)
		}
	}
	set("ALLOW", "allow", e.Allow)
	set("DENY", "deny", e.Deny)
	set("TRUST", "trust", e.Trust)
	set("RATE", "rate", e.Rate)
	set("BURST", "burst", e.Burst)
	set("SOURCE_PREFIX", "source_prefix", e.SourcePrefix)
	set("LISTENER_RATE", "listener_rate", e.ListenerRate)
	set("LISTENER_BURST", "listener_burst", e.ListenerBurst)
	set("AMPLIFICATION", "amplification", e.Amplification)
	return c
}

// listenerOptions are the keys a UDPGATE_LISTENERS entry may set after
// the listener, each overriding its variable for that listener only:
// 5683/coap;rate=50;burst=100;allow=10.0.0.0/8 192.0.2.0/24. Prefix lists
// in an entry are separated by spaces (commas separate listeners).
var listenerOptions = map[string]string{
	"allow": "ALLOW", "deny": "DENY", "trust": "TRUST", "rate": "RATE", "burst": "BURST",
	"source_prefix": "SOURCE_PREFIX", "listener_rate": "LISTENER_RATE", "listener_burst": "LISTENER_BURST",
	"amplification": "AMPLIFICATION",
	"reply":         "", // reply=off: not the guard's (listener.NoReply)
	"push":          "", // push=on: not the guard's (listener.Push)
	"group":         "", // multicast groups to join: not the guard's (listener.Groups)
	"df":            "", // df=on: not the guard's (listener.DontFragment)
	"identity":      "", // DTLS listeners' allowed identities: not the guard's (listener.Identities)
	"path":          "", // ws only: not the guard's (listener.Path)
	"conn_rate":     "WS_CONN_RATE",
}

// Options of one kind of listener only: a ws listener's calls come over
// TCP (no amplification, no trust to grant) and are always answered.
var (
	udpOnlyOptions = []string{"reply", "amplification", "trust", "push", "group", "df", "identity"}
	wsOnlyOptions  = []string{"path", "conn_rate"}
)

// checkListenerOptions checks the ;KEY=VALUE options of a listener entry.
func checkListenerOptions(opts string) error {
	var c guard.Config
	return applyListenerOptions(&c, opts)
}

// applyListenerOptions sets c from the ;KEY=VALUE options of a listener
// entry. Every bad option is reported.
func applyListenerOptions(c *guard.Config, opts string) error {
	if opts == "" {
		return nil
	}
	var errs []error
	seen := map[string]bool{}
	for _, kv := range strings.Split(opts, ";") {
		key, value, ok := strings.Cut(kv, "=")
		key = strings.TrimSpace(key)
		if _, known := listenerOptions[key]; !known || !ok {
			errs = append(errs, fmt.Errorf("option %q: want KEY=VALUE with KEY one of allow, deny, trust, rate, burst, source_prefix, listener_rate, listener_burst, amplification, reply, df (UDP listeners), push (raw listeners), group (raw and coap listeners), identity (coaps and dtls listeners), path, conn_rate (ws listeners)", kv))
			continue
		}
		if seen[key] {
			errs = append(errs, fmt.Errorf("option %s given twice", key))
			continue
		}
		seen[key] = true
		switch key { // not the guard's
		case "reply", "push", "df":
			if v := strings.TrimSpace(value); v != "on" && v != "off" {
				errs = append(errs, fmt.Errorf("option %s=%s: want on or off", key, value))
			}
			continue
		case "group":
			if _, err := parseGroups(value); err != nil {
				errs = append(errs, fmt.Errorf("option group=%s: %v", strings.TrimSpace(value), err))
			}
			continue
		case "identity":
			if _, err := parseIdentities(value); err != nil {
				errs = append(errs, fmt.Errorf("option identity=%s: %v", strings.TrimSpace(value), err))
			}
			continue
		case "path":
			continue // checked by parseListener
		case "conn_rate":
			var r float64
			if err := parseRate(key, value, &r); err != nil {
				errs = append(errs, fmt.Errorf("option %v", err))
			}
			continue
		}
		if err := setGuard(c, key, value); err != nil {
			errs = append(errs, fmt.Errorf("option %v", err))
		}
	}
	return errors.Join(errs...)
}

// replyOff reports whether checked listener options say reply=off.
func replyOff(opts string) bool {
	for _, kv := range strings.Split(opts, ";") {
		key, value, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(key) == "reply" && strings.TrimSpace(value) == "off" {
			return true
		}
	}
	return false
}

// setGuard sets the field of c named key from its text.
func setGuard(c *guard.Config, key, value string) error {
	value = strings.TrimSpace(value)
	rate := func(dst *float64) error { return parseRate(key, value, dst) }
	count := func(dst *int, hi int, what string) error {
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 || n > hi {
			return fmt.Errorf("%s=%q is not %s between 0 and %d", key, value, what, hi)
		}
		*dst = n
		return nil
	}
	prefixes := func(dst *[]netip.Prefix) error {
		ps, err := guard.ParsePrefixes(value)
		if err != nil {
			return fmt.Errorf("%s: %v", key, err)
		}
		*dst = ps
		return nil
	}
	switch key {
	case "allow":
		return prefixes(&c.Allow)
	case "deny":
		return prefixes(&c.Deny)
	case "trust":
		return prefixes(&c.Trust)
	case "rate":
		return rate(&c.Rate)
	case "listener_rate":
		return rate(&c.ListenerRate)
	case "burst":
		return count(&c.Burst, 1<<30, "a burst")
	case "listener_burst":
		return count(&c.ListenerBurst, 1<<30, "a burst")
	case "amplification":
		return count(&c.Factor, 1000, "a factor")
	case "source_prefix":
		f := strings.FieldsFunc(value, func(r rune) bool { return r == ',' || r == ' ' || r == '/' })
		var v4, v6 int
		if len(f) != 2 {
			return fmt.Errorf("%s=%q is not V4,V6 prefix lengths (like 32,64)", key, value)
		}
		var err4, err6 error
		v4, err4 = strconv.Atoi(f[0])
		v6, err6 = strconv.Atoi(f[1])
		if err4 != nil || err6 != nil || v4 < 1 || v4 > 32 || v6 < 1 || v6 > 128 {
			return fmt.Errorf("%s=%q is not V4,V6 prefix lengths in 1..32 and 1..128 (like 32,64)", key, value)
		}
		c.Prefix4, c.Prefix6 = v4, v6
		return nil
	}
	return fmt.Errorf("unknown option %s", key)
}

// parseRate parses the rate value of option key into dst.
func parseRate(key, value string, dst *float64) error {
	value = strings.TrimSpace(value)
	f, err := strconv.ParseFloat(value, 64)
	if err != nil || f < 0 || f > 1e9 || math.IsNaN(f) {
		return fmt.Errorf("%s=%q is not a rate between 0 (no limit) and 1e9 per second", key, value)
	}
	*dst = f
	return nil
}

// optionKeys returns the keys of listener options opts.
func optionKeys(opts string) []string {
	var keys []string
	if opts == "" {
		return nil
	}
	for _, kv := range strings.Split(opts, ";") {
		key, _, _ := strings.Cut(kv, "=")
		keys = append(keys, strings.TrimSpace(key))
	}
	return keys
}

// ConnRate returns a ws listener's messages per second per connection:
// its conn_rate option, or UDPGATE_WS_CONN_RATE (0: no limit).
func (c Config) ConnRate(l Listener) float64 {
	r := c.WS.ConnRate
	for _, kv := range strings.Split(l.Options, ";") {
		if key, value, _ := strings.Cut(kv, "="); strings.TrimSpace(key) == "conn_rate" {
			_ = parseRate(key, value, &r) // checked by parseListener
		}
	}
	return r
}

// ListenerGuard returns the guard configuration of listener l: the
// variables' values, overridden by l's options.
func (c Config) ListenerGuard(l Listener) guard.Config {
	g := c.Guard
	// Checked by parseListener already.
	_ = applyListenerOptions(&g, l.Options)
	if l.Protocol == schemas.ProtocolWS {
		g.Factor, g.Trust = 0, nil // nothing to amplify over TCP
	}
	return g
}

// parseIdentities parses the value of a DTLS listener's identity option:
// the peer identities it serves, separated by spaces (PSK identities, or
// client certificate subjects as udpgate-dtls-identity carries them, such
// as CN=device-12,O=Acme).
func parseIdentities(v string) ([]string, error) {
	ids := strings.Fields(v)
	if len(ids) == 0 {
		return nil, errors.New("want one or more identities, separated by spaces")
	}
	for _, id := range ids {
		for _, r := range id {
			if r < 0x20 || r == 0x7f {
				return nil, fmt.Errorf("identity %q: control characters are never an identity", id)
			}
		}
	}
	return ids, nil
}

// Identities returns the peer identities a coaps or dtls listener serves
// (option identity=), nil for all that authenticate.
func (l Listener) Identities() []string { return identitiesOf(l.Options) }

// identitiesOf returns the identities of checked listener options, nil if
// they name none.
func identitiesOf(opts string) []string {
	for _, kv := range strings.Split(opts, ";") {
		key, value, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(key) == "identity" {
			ids, _ := parseIdentities(value)
			return ids
		}
	}
	return nil
}
