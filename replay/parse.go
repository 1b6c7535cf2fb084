package replay

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ParseSpeed parses "original", "max" or a factor like "2x", "0.5x" (the
// "x" may be left out).
func ParseSpeed(s string) (Speed, error) {
	switch s {
	case "original":
		return Original, nil
	case "max":
		return Max, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSuffix(s, "x"), 64)
	if err != nil || f <= 0 || f > 1e6 {
		return 0, fmt.Errorf("speed %q is not original, max or a factor like 2x", s)
	}
	return Speed(f), nil
}

// ParseTime parses an instant as RFC 3339 ("2026-11-23T16:00:00Z") or as a
// duration before now ("10m", "1h30m").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration like 10m", s)
	}
	return now.Add(-d), nil
}

// ParsePorts parses a comma-separated list of ports.
func ParsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("%q is not a port", f)
		}
		ports = append(ports, uint16(p))
	}
	return ports, nil
}

// ParseTo parses a wire destination udp://HOST:PORT, resolving HOST.
func ParseTo(s string) (netip.AddrPort, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "udp" || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return netip.AddrPort{}, fmt.Errorf("%q is not udp://HOST:PORT", s)
	}
	a, err := net.ResolveUDPAddr("udp", u.Host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", u.Host, err)
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
