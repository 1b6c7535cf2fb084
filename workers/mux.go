package workers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"unicode"

	"github.com/udpgate/udpgate/schemas"
)

// Mux routes CoAP requests to handlers by method and path, as net/http's
// ServeMux routes HTTP requests. It is a Handler; Route and RouteFunc
// register handlers (a Mux cannot name them Handle: that is the method that
// makes it a Handler).
//
// # Patterns
//
// A pattern is an optional method, one or more spaces, and a path:
// "GET /time", "POST /items", "/items/{id}", "GET /files/{path...}". The
// method is one of GET, POST, PUT, DELETE, FETCH, PATCH and iPATCH; a
// pattern without one matches every method. The path starts with "/" and
// is made of segments, each of which is
//
//   - a literal, matching a Uri-Path option equal to it once
//     percent-decoded ("%2F" stands for a "/" inside the segment, "%7B"
//     for "{"); a literal segment cannot be empty;
//   - {name}, matching any one segment;
//   - {name...}, last only, matching the rest of the path: zero or more
//     segments.
//
// A name is a Go identifier and appears once in a pattern; the handler
// reads what its wildcard matched with Request.PathValue. "/" matches a
// request without Uri-Path, and "/{path...}" matches every request, which
// makes it a fallback for paths no other pattern serves.
//
// # Precedence and conflicts
//
// When several patterns match a request, the most specific wins: the one
// that matches a strict subset of the requests the others match. So
// "GET /items/new" beats "/items/{id}", which beats "/items/{rest...}",
// and "GET /a" beats "/a". Two patterns that can match the same request
// without one being more specific, such as "GET /{x}" and "/a", or
// "/a/{x}" and "/{y}/b", conflict: Route panics when the second is
// registered, as does registering a pattern twice.
//
// # Answers
//
// A request no pattern matches gets 4.04 Not Found; one whose path a
// pattern matches for another method gets 4.05 Method Not Allowed; one
// whose path header is missing or malformed gets 4.00 Bad Request. These
// replies have no payload. A request that is not CoAP is a handler error
// (udpgate-status error, see the package documentation).
//
// The zero Mux has no patterns and is ready to use. A Mux is safe for
// concurrent use, also while it handles requests.
type Mux struct {
	mu     sync.RWMutex // guards routes and links
	routes []*route     // most specific first: the first match wins
	links  Links        // the last Discovery's, for the group's announcement
}

// NewMux returns a new, empty Mux.
func NewMux() *Mux {
	return &Mux{}
}

// methods are the CoAP methods a pattern may name.
var methods = []string{"GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"}

// route is one parsed pattern and its handler.
type route struct {
	pattern string
	method  string    // "" for every method
	segs    []segment // before the {name...} wildcard, if any
	rest    string    // name of the final {name...} wildcard; "" if none
	multi   bool      // the pattern ends in {rest...}
	handler Handler
	// observable: a GET with Observe 0 that the handler answers 2.xx is
	// accepted as a registration (Observable).
	observable bool
}

// segment is a literal or a {name} wildcard.
type segment struct {
	s    string // the decoded literal, or the wildcard's name
	wild bool
}

// Route registers h for pattern. It panics if the pattern is malformed,
// conflicts with one already registered, or h is nil.
func (m *Mux) Route(pattern string, h Handler) {
	if h == nil {
		panic(fmt.Sprintf("workers: mux: pattern %q: nil handler", pattern))
	}
	rt, err := parsePattern(pattern)
	if err != nil {
		panic(fmt.Sprintf("workers: mux: pattern %q: %v", pattern, err))
	}
	rt.handler = h
	if o, ok := h.(observable); ok {
		rt.handler, rt.observable = o.Handler, true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	at := len(m.routes)
	for i, old := range m.routes {
		switch rt.compare(old) {
		case equivalent, overlaps:
			panic(fmt.Sprintf("workers: mux: pattern %q conflicts with pattern %q: both match %s",
				pattern, old.pattern, rt.common(old)))
		case moreSpecific:
			at = min(at, i)
		}
	}
	// Every route before at is not more general than rt; none after it is
	// more specific than rt, or it would be more specific than m.routes[at]
	// too, which the order already rules out.
	m.routes = slices.Insert(m.routes, at, rt)
}

// Observable registers h for pattern, as Route does, and makes the
// resources it serves observable (RFC 7641): when h answers a GET that
// has Observe 0 with a 2.xx code, the reply accepts the registration (the
// udpgate-coap-observe header), and the gateway keeps the client as an
// observer and sends it each representation a Notifier publishes for the
// resource. Discovery lists the pattern's path with the obs attribute.
// h answers a registration as any GET: with the current representation.
func (m *Mux) Observable(pattern string, h Handler) {
	m.Route(pattern, observable{h})
}

// observable marks the handler of an Observable route.
type observable struct{ Handler }

// RouteFunc registers f for pattern, as Route does.
func (m *Mux) RouteFunc(pattern string, f func(ctx context.Context, w ResponseWriter, r *Request) error) {
	if f == nil {
		panic(fmt.Sprintf("workers: mux: pattern %q: nil handler", pattern))
	}
	m.Route(pattern, HandlerFunc(f))
}

// Handle routes r to the handler of the most specific pattern that matches
// it, after setting r.Pattern and the values PathValue returns. It answers
// itself when no pattern matches (see Mux).
func (m *Mux) Handle(ctx context.Context, w ResponseWriter, r *Request) error {
	c := r.CoAP
	if c == nil {
		return errors.New("workers: mux: not a CoAP request")
	}
	if c.Path == "" {
		NewCoAPResponse(w).SetCode(BadRequest)
		return nil
	}
	rt, code := m.match(c.Method, c.Segments)
	if rt == nil {
		NewCoAPResponse(w).SetCode(code)
		return nil
	}
	r.Pattern = rt.pattern
	r.pathValues = r.pathValues[:0]
	for i, s := range rt.segs {
		if s.wild {
			r.pathValues = append(r.pathValues, pathValue{s.s, c.Segments[i]})
		}
	}
	if rt.multi {
		r.pathValues = append(r.pathValues, pathValue{rt.rest, strings.Join(c.Segments[len(rt.segs):], "/")})
	}
	if !rt.observable || c.Observe != 0 || c.Method != "GET" {
		return rt.handler.Handle(ctx, w, r)
	}
	if err := rt.handler.Handle(ctx, w, r); err != nil {
		return err
	}
	if code := w.Header().Get(schemas.HeaderCoAPCode); code == "" || strings.HasPrefix(code, "2.") {
		w.Header().Set(schemas.HeaderCoAPObserve, "1")
	}
	return nil
}

// match returns the route for a request, or nil and the code to answer.
func (m *Mux) match(method string, segs []string) (*route, Code) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	code := NotFound
	for _, rt := range m.routes {
		if !rt.matchPath(segs) {
			continue
		}
		if rt.method == "" || rt.method == method {
			return rt, ""
		}
		code = MethodNotAllowed
	}
	return nil, code
}

func (rt *route) matchPath(segs []string) bool {
	if len(segs) < len(rt.segs) || len(segs) > len(rt.segs) && !rt.multi {
		return false
	}
	for i, s := range rt.segs {
		if !s.wild && s.s != segs[i] {
			return false
		}
	}
	return true
}

// Subjects returns the NATS filter subjects of the CoAP requests on port
// that m has a pattern for, to use as a Server's Subjects so that the group
// receives only what it serves: schemas.CoAPSubject with "*" for a pattern
// without method and for {name}, and both the subject without and with
// ".>" for {name...}, since ">" matches one token or more. Subjects that
// another one covers are left out, as JetStream wants a consumer's filters
// not to overlap. The result is sorted; nil for a Mux without patterns.
//
// A group filtered this way never receives a request the Mux would answer
// 4.04 or 4.05: the gateway answers those at once (4.04, or 4.05 when a
// group announces the path with another method) unless another group
// serves them, so several groups can share a port. Filtering every CoAP
// request of the port instead (schemas.InSubject(prefix, port) + ".>")
// makes the group a catch-all that races every other group of the port.
func (m *Mux) Subjects(prefix string, port uint16) []string {
	m.mu.RLock()
	var all []string
	for _, rt := range m.routes {
		var b strings.Builder
		b.WriteString(schemas.InSubject(prefix, port))
		b.WriteByte('.')
		b.WriteString(cmp.Or(rt.method, "*"))
		for _, s := range rt.segs {
			b.WriteByte('.')
			if s.wild {
				b.WriteByte('*')
			} else {
				b.WriteString(schemas.EscapeToken(s.s))
			}
		}
		all = append(all, b.String())
		if rt.multi {
			all = append(all, b.String()+".>")
		}
	}
	m.mu.RUnlock()
	slices.Sort(all)
	all = slices.Compact(all)
	var subjects []string
	for _, s := range all {
		if !slices.ContainsFunc(all, func(t string) bool { return t != s && covers(t, s) }) {
			subjects = append(subjects, s)
		}
	}
	return subjects
}

// covers reports whether the filter subject t matches every subject that
// the filter s matches.
func covers(t, s string) bool {
	tt, ss := strings.Split(t, "."), strings.Split(s, ".")
	for i, tok := range tt {
		if tok == ">" {
			return len(ss) > i
		}
		if i >= len(ss) || tok != ss[i] && (tok != "*" || ss[i] == ">") {
			return false
		}
	}
	return len(tt) == len(ss)
}

// parsePattern parses a pattern; see Mux for the syntax.
func parsePattern(pattern string) (*route, error) {
	rt := &route{pattern: pattern}
	path := pattern
	if i := strings.IndexAny(pattern, " \t"); i >= 0 && !strings.HasPrefix(pattern, "/") {
		rt.method, path = pattern[:i], strings.TrimLeft(pattern[i+1:], " \t")
		if !slices.Contains(methods, rt.method) {
			return nil, fmt.Errorf("unknown method %q (want one of %s)", rt.method, strings.Join(methods, ", "))
		}
	}
	rest, ok := strings.CutPrefix(path, "/")
	if !ok {
		return nil, errors.New(`path must start with "/"`)
	}
	if rest == "" {
		return rt, nil
	}
	seen := map[string]bool{}
	parts := strings.Split(rest, "/")
	for i, p := range parts {
		name, isWild := strings.CutPrefix(p, "{")
		if !isWild {
			if p == "" {
				return nil, errors.New("empty segment")
			}
			if strings.ContainsAny(p, "{}") {
				return nil, fmt.Errorf("segment %q: a wildcard must be a whole segment", p)
			}
			lit, err := url.PathUnescape(p)
			if err != nil {
				return nil, fmt.Errorf("segment %q: %v", p, err)
			}
			rt.segs = append(rt.segs, segment{s: lit})
			continue
		}
		name, closed := strings.CutSuffix(name, "}")
		if !closed {
			return nil, fmt.Errorf("segment %q: a wildcard must be a whole segment", p)
		}
		name, rt.multi = strings.CutSuffix(name, "...")
		if rt.multi && i != len(parts)-1 {
			return nil, fmt.Errorf("wildcard %q is not last", p)
		}
		if !isIdentifier(name) {
			return nil, fmt.Errorf("wildcard %q: name is not a Go identifier", p)
		}
		if seen[name] {
			return nil, fmt.Errorf("wildcard %q appears twice", name)
		}
		seen[name] = true
		if rt.multi {
			rt.rest = name
		} else {
			rt.segs = append(rt.segs, segment{s: name, wild: true})
		}
	}
	return rt, nil
}

func isIdentifier(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c != '_' && !unicode.IsLetter(c) && (i == 0 || !unicode.IsDigit(c)) {
			return false
		}
	}
	return true
}

// relation is how the requests that two patterns match relate, as sets.
type relation int

const (
	disjoint     relation = iota // no request matches both
	equivalent                   // the same requests
	moreSpecific                 // the first matches a strict subset of the second's
	moreGeneral                  // the first matches a strict superset of the second's
	overlaps                     // some requests match both, neither is a subset
)

func (r relation) inverse() relation {
	switch r {
	case moreSpecific:
		return moreGeneral
	case moreGeneral:
		return moreSpecific
	}
	return r
}

// combine returns the relation of two sets of requests that are products
// of two dimensions related by a and b.
func combine(a, b relation) relation {
	switch {
	case a == disjoint || b == disjoint:
		return disjoint
	case a == equivalent:
		return b
	case b == equivalent:
		return a
	case a == overlaps || b == overlaps || a == b.inverse():
		return overlaps
	}
	return a // a == b, more specific or more general
}

// compare returns how the requests rt matches relate to those o matches.
func (rt *route) compare(o *route) relation {
	var rel relation
	switch {
	case rt.method == o.method:
		rel = equivalent
	case rt.method == "":
		rel = moreGeneral
	case o.method == "":
		rel = moreSpecific
	default:
		return disjoint
	}
	n := min(len(rt.segs), len(o.segs))
	for i := range n {
		a, b := rt.segs[i], o.segs[i]
		switch {
		case a.wild && b.wild:
		case a.wild:
			rel = combine(rel, moreGeneral)
		case b.wild:
			rel = combine(rel, moreSpecific)
		case a.s != b.s:
			return disjoint
		}
	}
	// The segments past n, and the number of segments, are matched by a
	// final {name...} or not at all.
	switch {
	case len(rt.segs) < len(o.segs) && !rt.multi, len(o.segs) < len(rt.segs) && !o.multi:
		return disjoint
	case len(rt.segs) < len(o.segs), len(rt.segs) == len(o.segs) && rt.multi && !o.multi:
		return combine(rel, moreGeneral)
	case len(o.segs) < len(rt.segs), len(rt.segs) == len(o.segs) && o.multi && !rt.multi:
		return combine(rel, moreSpecific)
	}
	return rel
}

// common describes a request that both rt and o match, for a panic message.
func (rt *route) common(o *route) string {
	var path []string
	for i := range max(len(rt.segs), len(o.segs)) {
		seg := "x"
		if i < len(rt.segs) && !rt.segs[i].wild {
			seg = rt.segs[i].s
		} else if i < len(o.segs) && !o.segs[i].wild {
			seg = o.segs[i].s
		}
		path = append(path, url.PathEscape(seg))
	}
	return cmp.Or(rt.method, o.method, "GET") + " /" + strings.Join(path, "/")
}
