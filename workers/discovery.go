package workers

import (
	"cmp"
	"context"
	"net/url"
	"slices"
	"strings"

	"github.com/udpgate/udpgate/coap/linkformat"
)

// ContentFormatLinkFormat is the CoAP Content-Format of
// application/link-format, the CoRE Link Format (RFC 6690).
const ContentFormatLinkFormat = 40

// WellKnownCore is the path of CoAP resource discovery (RFC 6690).
const WellKnownCore = "/.well-known/core"

// Links are the CoRE Link Format attributes of resources, by path, for
// Mux.Discovery: for example {"/time": `rt="time";ct=0`}. A value is
// what follows the link's "<path>" in link-format, without the first
// ";"; an empty value lists the path with no attributes.
type Links map[string]string

// Discovery returns a Handler that answers resource discovery (RFC 6690)
// with the resources m serves, to route as "GET /.well-known/core":
//
//	mux.Route("GET "+workers.WellKnownCore, mux.Discovery(nil))
//
// The answer lists, in application/link-format (Content-Format 40) and
// sorted by path, every path that a pattern of m names without wildcards,
// with its attributes from links, and every other path of links, so that
// concrete resources behind a wildcard pattern ("/sensors/1" for
// "GET /sensors/{id}") can be listed too. WellKnownCore itself is not
// listed. The patterns are read at each request, so routes registered
// later appear.
//
// A request may filter the links with one Uri-Query "name=value": href
// matches the path, any other name an attribute of that name, whose
// quoted value may be a space-separated list of which one item must match
// (rt="temperature sensor" matches rt=sensor). A value ending in "*"
// matches every value it is a prefix of. A query without "=" filters
// nothing. When no link matches, the answer is 4.04 Not Found.
func (m *Mux) Discovery(links Links) Handler {
	m.mu.Lock()
	m.links = links
	m.mu.Unlock()
	return HandlerFunc(func(_ context.Context, w ResponseWriter, r *Request) error {
		resp := NewCoAPResponse(w)
		var name, want string
		if c := r.CoAP; c != nil {
			name, want, _ = linkformat.Query(c.Query)
		}
		b := m.appendLinks(nil, links, name, want)
		if len(b) == 0 {
			resp.SetCode(NotFound)
			return nil
		}
		resp.SetContentFormat(ContentFormatLinkFormat)
		_, err := resp.Write(b)
		return err
	})
}

// SetLinks sets the attributes of m's resources, as Discovery does, for a
// Mux that announces its resources (Server.Silent false) but leaves
// /.well-known/core to the gateway, which answers it from every group's
// announcements: see Links for the values.
func (m *Mux) SetLinks(links Links) {
	m.mu.Lock()
	m.links = links
	m.mu.Unlock()
}

// path returns the path of rt, a pattern without wildcards, as a link
// names it.
func (rt *route) path() string {
	var p strings.Builder
	for _, s := range rt.segs {
		p.WriteByte('/')
		p.WriteString(url.PathEscape(s.s))
	}
	return cmp.Or(p.String(), "/")
}

// appendLinks appends to b, in link-format, the links Discovery lists for
// links that pass the filter name=want (none if name is empty).
func (m *Mux) appendLinks(b []byte, links Links, name, want string) []byte {
	all := make([]linkformat.Link, 0, len(links))
	obs := m.observablePaths()
	for _, path := range m.linkPaths(links) {
		attrs := links[path]
		if obs[path] && !hasAttr(attrs, "obs") {
			attrs = strings.TrimSuffix("obs;"+attrs, ";")
		}
		all = append(all, linkformat.Link{Path: path, Attrs: attrs})
	}
	return linkformat.Append(b, linkformat.Filter(all, name, want))
}

// observablePaths returns the paths of m's Observable patterns without
// wildcards, as linkPaths writes them.
func (m *Mux) observablePaths() map[string]bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var obs map[string]bool
	for _, rt := range m.routes {
		if !rt.observable || rt.multi || slices.ContainsFunc(rt.segs, func(s segment) bool { return s.wild }) {
			continue
		}
		if obs == nil {
			obs = map[string]bool{}
		}
		obs[rt.path()] = true
	}
	return obs
}

// hasAttr reports whether the link-format attributes attrs have one
// named name.
func hasAttr(attrs, name string) bool {
	for _, a := range strings.Split(attrs, ";") {
		if k, _, _ := strings.Cut(a, "="); strings.TrimSpace(k) == name {
			return true
		}
	}
	return false
}

// linkFormat returns, in link-format, every resource m serves with the
// attributes its Discovery or SetLinks was given: what its
// /.well-known/core lists.
func (m *Mux) linkFormat() string {
	m.mu.RLock()
	links := m.links
	m.mu.RUnlock()
	return string(m.appendLinks(nil, links, "", ""))
}

// linkPaths returns the sorted paths Discovery lists: those of m's
// patterns without wildcards, and those of links.
func (m *Mux) linkPaths(links Links) []string {
	m.mu.RLock()
	paths := make([]string, 0, len(m.routes)+len(links))
	for _, rt := range m.routes {
		if rt.multi || slices.ContainsFunc(rt.segs, func(s segment) bool { return s.wild }) {
			continue
		}
		paths = append(paths, rt.path())
	}
	m.mu.RUnlock()
	for path := range links {
		paths = append(paths, path)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	return slices.DeleteFunc(paths, func(p string) bool { return p == WellKnownCore })
}
