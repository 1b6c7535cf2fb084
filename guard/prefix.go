package guard

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ParsePrefixes parses a list of CIDR prefixes separated by commas or
// spaces ("10.0.0.0/8, 2001:db8::/32"). A bare address stands for itself
// (/32 or /128). IPv4-mapped IPv6 prefixes (::ffff:10.0.0.0/104) become
// IPv4 prefixes; bits set after the prefix length are an error, so that
// "10.1.2.3/8" cannot be mistaken for a single host. Every bad entry is
// reported.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var bad []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		p, err := parsePrefix(f)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return out, nil
}

func parsePrefix(f string) (netip.Prefix, error) {
	if !strings.Contains(f, "/") {
		a, err := netip.ParseAddr(f)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", f)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(f)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix (like 192.0.2.0/24 or 2001:db8::/32)", f)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has bits set after /%d (did you mean %s?)", f, p.Bits(), p.Masked())
	}
	return normalise(p), nil
}

// normalise turns an IPv4-mapped IPv6 prefix into its IPv4 prefix.
func normalise(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if !a.Is4In6() {
		return p
	}
	if p.Bits() < 96 {
		// Covers more than the mapped range; keep it as IPv6 (it
		// matches no normalised source, which are never mapped).
		return p
	}
	return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
}

// prefixSet answers "is this address in one of the prefixes" with one map
// lookup per distinct prefix length, without allocating.
type prefixSet struct {
	lens4, lens6 []int // distinct prefix lengths, longest first
	m            map[netip.Prefix]struct{}
}

func newPrefixSet(ps []netip.Prefix) prefixSet {
	s := prefixSet{m: make(map[netip.Prefix]struct{}, len(ps))}
	for _, p := range ps {
		p = normalise(p).Masked()
		if !p.IsValid() {
			continue
		}
		s.m[p] = struct{}{}
		lens := &s.lens6
		if p.Addr().Is4() {
			lens = &s.lens4
		}
		if !slices.Contains(*lens, p.Bits()) {
			*lens = append(*lens, p.Bits())
		}
	}
	slices.Sort(s.lens4)
	slices.Reverse(s.lens4)
	slices.Sort(s.lens6)
	slices.Reverse(s.lens6)
	return s
}

func (s *prefixSet) empty() bool { return len(s.m) == 0 }

// contains reports whether a (unmapped, without zone) is in the set.
func (s *prefixSet) contains(a netip.Addr) bool {
	lens := s.lens6
	if a.Is4() {
		lens = s.lens4
	}
	for _, bits := range lens {
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if _, ok := s.m[p]; ok {
			return true
		}
	}
	return false
}
