// Package linkformat reads, writes and filters the CoRE Link Format
// (RFC 6690), in which CoAP servers list their resources at
// /.well-known/core: `</time>;rt="time";ct=0,</echo>`. It knows what
// udpgate needs: a link's target path and the text of its attributes, and
// the filters of RFC 6690 §4.1 on either. It never fails: text that is
// not link-format yields the links it can read.
package linkformat

import (
	"strings"
)

// Link is one link: its target and its attributes.
type Link struct {
	// Path is the target, between "<" and ">": "/time".
	Path string
	// Attrs is what follows the target, without the first ";":
	// `rt="time";ct=0`. Empty for a link without attributes.
	Attrs string
}

// Parse returns the links of s, in order. Commas and semicolons inside
// quoted values or the target do not separate; a link without a "<target>"
// is skipped.
func Parse(s string) []Link {
	var links []Link
	for len(s) > 0 {
		n := linkEnd(s)
		if l, ok := parseLink(strings.TrimSpace(s[:n])); ok {
			links = append(links, l)
		}
		if n == len(s) {
			break
		}
		s = s[n+1:]
	}
	return links
}

// linkEnd returns the index of the comma that ends the first link of s,
// or len(s).
func linkEnd(s string) int {
	quoted, target := false, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted && i+1 < len(s):
			i++
		case c == '"' && !target:
			quoted = !quoted
		case c == '<' && !quoted:
			target = true
		case c == '>' && !quoted:
			target = false
		case c == ',' && !quoted && !target:
			return i
		}
	}
	return len(s)
}

func parseLink(s string) (Link, bool) {
	rest, ok := strings.CutPrefix(s, "<")
	if !ok {
		return Link{}, false
	}
	path, attrs, ok := strings.Cut(rest, ">")
	if !ok || path == "" {
		return Link{}, false
	}
	attrs = strings.TrimSpace(attrs)
	attrs = strings.TrimSpace(strings.TrimPrefix(attrs, ";"))
	return Link{Path: path, Attrs: attrs}, true
}

// Append appends links to b in link-format.
func Append(b []byte, links []Link) []byte {
	for i, l := range links {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '<')
		b = append(b, l.Path...)
		b = append(b, '>')
		if l.Attrs != "" {
			b = append(b, ';')
			b = append(b, l.Attrs...)
		}
	}
	return b
}

// Format returns links in link-format.
func Format(links []Link) string { return string(Append(nil, links)) }

// Query returns the filter of a request's Uri-Query options, as RFC 6690
// §4.1 reads them: the first "name=value" option; ok is false when there
// is none (no filter).
func Query(options []string) (name, value string, ok bool) {
	for _, q := range options {
		if n, v, found := strings.Cut(q, "="); found && n != "" {
			return n, v, true
		}
	}
	return "", "", false
}

// Matches reports whether l passes the filter name=want: "href" matches
// the target, any other name an attribute of that name, whose quoted
// value may be a space-separated list of which one item must match
// (rt="temperature sensor" matches rt=sensor). A want ending in "*"
// matches every value it is a prefix of.
func (l Link) Matches(name, want string) bool {
	if name == "href" {
		return valueMatches(l.Path, want)
	}
	for _, a := range splitAttrs(l.Attrs) {
		n, v, _ := strings.Cut(strings.TrimSpace(a), "=")
		if n != name {
			continue
		}
		if uq, quoted := strings.CutPrefix(v, `"`); quoted {
			for _, item := range strings.Fields(strings.TrimSuffix(uq, `"`)) {
				if valueMatches(item, want) {
					return true
				}
			}
			continue
		}
		if valueMatches(v, want) {
			return true
		}
	}
	return false
}

// Filter returns the links of links that pass the filter name=want, in
// order; all of them when name is empty.
func Filter(links []Link, name, want string) []Link {
	if name == "" {
		return links
	}
	var out []Link
	for _, l := range links {
		if l.Matches(name, want) {
			out = append(out, l)
		}
	}
	return out
}

// splitAttrs splits attributes on the semicolons outside quoted values.
func splitAttrs(s string) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case ';':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// valueMatches reports whether v equals want, or starts with want's text
// before a final "*".
func valueMatches(v, want string) bool {
	if prefix, ok := strings.CutSuffix(want, "*"); ok {
		return strings.HasPrefix(v, prefix)
	}
	return v == want
}
