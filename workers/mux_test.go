package workers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// recorder is a workers.ResponseWriter that keeps what is written.
type recorder struct {
	header nats.Header
	body   bytes.Buffer
}

func (w *recorder) Header() nats.Header {
	if w.header == nil {
		w.header = nats.Header{}
	}
	return w.header
}

func (w *recorder) Write(p []byte) (int, error) { return w.body.Write(p) }

// coapRequest returns a CoAP request for the path of segments, without
// going through the header parser.
func coapRequest(method string, segments ...string) *workers.Request {
	return &workers.Request{CoAP: &workers.CoAPRequest{
		Method:        method,
		Path:          "/" + strings.Join(segments, "/"),
		Segments:      segments,
		ContentFormat: -1,
		Accept:        -1,
	}}
}

// patternHandler writes the pattern that matched and the path values of
// names, as "pattern name=value ...".
func patternHandler(names ...string) workers.HandlerFunc {
	return func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
		out := r.Pattern
		for _, n := range names {
			out += " " + n + "=" + r.PathValue(n)
		}
		_, err := w.Write([]byte(out))
		return err
	}
}

// route runs m on r and returns what it wrote: the body, or the code.
func route(t *testing.T, m *workers.Mux, r *workers.Request) string {
	t.Helper()
	var w recorder
	if err := m.Handle(context.Background(), &w, r); err != nil {
		t.Fatalf("Handle = %v", err)
	}
	if code := w.Header().Get(schemas.HeaderCoAPCode); code != "" {
		if w.body.Len() > 0 {
			t.Errorf("reply %s has a payload %q", code, w.body.String())
		}
		return code
	}
	return w.body.String()
}

func TestMuxMatch(t *testing.T) {
	patterns := map[string][]string{ // pattern: wildcard names
		"GET /time":               nil,
		"POST /echo":              nil,
		"/things/{id}":            {"id"},
		"GET /things/new":         nil,
		"DELETE /things/{id}":     {"id"},
		"/things/{id}/parts/{n}":  {"id", "n"},
		"GET /files/{path...}":    {"path"},
		"GET /files/readme":       nil,
		"GET /files/{dir}/index":  {"dir"},
		"/":                       nil,
		"PUT /caf%C3%A9/a%2Fb":    nil,
		"FETCH /all/{all...}":     {"all"},
		"GET /a/{x}/{rest...}":    {"x", "rest"},
		"GET /a/b/{y}":            {"y"},
		"iPATCH /things/{id}/raw": {"id"},
	}
	m := workers.NewMux()
	for p, names := range patterns {
		m.Route(p, patternHandler(names...))
	}
	tests := []struct {
		name     string
		method   string
		segments []string
		want     string
	}{
		{"literal", "GET", []string{"time"}, "GET /time"},
		{"literal other method", "PUT", []string{"time"}, "4.05"},
		{"unknown path", "GET", []string{"nope"}, "4.04"},
		{"too long for literal", "GET", []string{"time", "x"}, "4.04"},
		{"literal beats wildcard", "GET", []string{"things", "new"}, "GET /things/new"},
		{"wildcard when literal's method differs", "PUT", []string{"things", "new"}, "/things/{id} id=new"},
		{"method beats no method", "DELETE", []string{"things", "7"}, "DELETE /things/{id} id=7"},
		{"no method matches any", "POST", []string{"things", "7"}, "/things/{id} id=7"},
		{"unknown method on pattern without method", "FOO", []string{"things", "7"}, "/things/{id} id=7"},
		{"two wildcards", "GET", []string{"things", "7", "parts", "2"}, "/things/{id}/parts/{n} id=7 n=2"},
		{"wildcard matches empty segment", "GET", []string{"things", ""}, "/things/{id} id="},
		{"wildcard matches decoded slash", "GET", []string{"things", "a/b"}, "/things/{id} id=a/b"},
		{"rest matches zero segments", "GET", []string{"files"}, "GET /files/{path...} path="},
		{"rest matches one segment", "GET", []string{"files", "x"}, "GET /files/{path...} path=x"},
		{"rest matches several", "GET", []string{"files", "a", "b", "c"}, "GET /files/{path...} path=a/b/c"},
		{"literal beats rest", "GET", []string{"files", "readme"}, "GET /files/readme"},
		{"wildcard beats rest", "GET", []string{"files", "d", "index"}, "GET /files/{dir}/index dir=d"},
		{"rest after wildcard loses", "GET", []string{"files", "d", "other"}, "GET /files/{path...} path=d/other"},
		{"rest other method", "POST", []string{"files", "x"}, "4.05"},
		{"root", "GET", nil, "/"},
		{"root any method", "POST", nil, "/"},
		{"rest", "FETCH", []string{"all", "x", "y"}, "FETCH /all/{all...} all=x/y"},
		{"rest empty", "FETCH", []string{"all"}, "FETCH /all/{all...} all="},
		{"decoded literal", "PUT", []string{"café", "a/b"}, "PUT /caf%C3%A9/a%2Fb"},
		{"literal is not split", "PUT", []string{"café", "a", "b"}, "4.04"},
		{"nested wildcards", "GET", []string{"a", "b", "c"}, "GET /a/b/{y} y=c"},
		{"nested wildcards, rest", "GET", []string{"a", "z", "c", "d"}, "GET /a/{x}/{rest...} x=z rest=c/d"},
		{"nested wildcards, empty rest", "GET", []string{"a", "b"}, "GET /a/{x}/{rest...} x=b rest="},
		{"case-sensitive method", "ipatch", []string{"things", "7", "raw"}, "4.05"},
		{"iPATCH", "iPATCH", []string{"things", "7", "raw"}, "iPATCH /things/{id}/raw id=7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := route(t, m, coapRequest(tt.method, tt.segments...)); got != tt.want {
				t.Errorf("%s /%s routed to %q, want %q", tt.method, strings.Join(tt.segments, "/"), got, tt.want)
			}
		})
	}
}

// TestMuxOrder checks that precedence does not depend on the order in
// which patterns are registered.
func TestMuxOrder(t *testing.T) {
	patterns := []string{
		"/{all...}", "GET /", "GET /a/{rest...}", "GET /a/{x}", "GET /a/b",
		"/b/{x}", "GET /b/{x}", "GET /b/c", "PUT /b/{x}/c",
	}
	tests := []struct {
		method   string
		segments []string
		want     string
	}{
		{"GET", nil, "GET /"},
		{"PUT", nil, "/{all...}"},
		{"GET", []string{"a"}, "GET /a/{rest...}"},
		{"PUT", []string{"a"}, "/{all...}"},
		{"GET", []string{"a", "b"}, "GET /a/b"},
		{"GET", []string{"a", "z"}, "GET /a/{x}"},
		{"GET", []string{"a", "b", "c"}, "GET /a/{rest...}"},
		{"GET", []string{"b", "c"}, "GET /b/c"},
		{"PUT", []string{"b", "c"}, "/b/{x}"},
		{"GET", []string{"b", "z"}, "GET /b/{x}"},
		{"PUT", []string{"b", "z", "c"}, "PUT /b/{x}/c"},
		{"GET", []string{"b", "z", "c"}, "/{all...}"},
		{"GET", []string{"z"}, "/{all...}"},
	}
	for k := range patterns {
		for _, reverse := range []bool{false, true} {
			order := append(slices.Clone(patterns[k:]), patterns[:k]...)
			if reverse {
				slices.Reverse(order)
			}
			m := workers.NewMux()
			for _, p := range order {
				m.Route(p, patternHandler())
			}
			for _, tt := range tests {
				if got := route(t, m, coapRequest(tt.method, tt.segments...)); got != tt.want {
					t.Errorf("registered in order %q: %s /%s routed to %q, want %q",
						order, tt.method, strings.Join(tt.segments, "/"), got, tt.want)
				}
			}
		}
	}
}

func TestMuxConflicts(t *testing.T) {
	tests := []struct {
		first, second string
		conflict      string // the request in the panic message; "" for none
	}{
		{"GET /a", "GET /a", "GET /a"},
		{"/a/{x}", "/a/{y}", "GET /a/x"},
		{"GET /{x}", "/a", "GET /a"},
		{"/a/{x}", "/{y}/b", "GET /a/b"},
		{"GET /a/{x}/c", "GET /a/b/{y}", "GET /a/b/c"},
		{"/a/{x...}", "/{y}/b/{z...}", "GET /a/b"},
		{"/{x...}", "/{y...}", "GET /"},
		{"POST /{x...}", "/a/{x...}", "POST /a"},
		{"/a/{x...}", "/a/{y}", ""},
		{"/a/{x...}", "/a", ""},
		{"/{x...}", "/", ""},
		{"/a", "GET /a", ""},
		{"GET /a", "POST /a", ""},
		{"GET /{x}", "POST /a", ""},
		{"/a/{x}", "/b/{x}", ""},
		{"/a/{x}", "/a/{x}/c", ""},
		{"/a", "/a/b", ""},
		{"/{x}/b", "/{x}/c", ""},
	}
	for _, tt := range tests {
		for _, order := range [][2]string{{tt.first, tt.second}, {tt.second, tt.first}} {
			t.Run(order[0]+" then "+order[1], func(t *testing.T) {
				m := workers.NewMux()
				m.Route(order[0], patternHandler())
				got := panicOf(func() { m.Route(order[1], patternHandler()) })
				if tt.conflict == "" {
					if got != "" {
						t.Fatalf("Route panicked: %s", got)
					}
					return
				}
				want := fmt.Sprintf("workers: mux: pattern %q conflicts with pattern %q: both match %s", order[1], order[0], tt.conflict)
				if got != want {
					t.Errorf("Route panicked with\n%q\nwant %q", got, want)
				}
			})
		}
	}
}

func TestMuxBadPatterns(t *testing.T) {
	tests := []struct {
		pattern, want string
	}{
		{"", `path must start with "/"`},
		{"GET", `path must start with "/"`},
		{"time", `path must start with "/"`},
		{"get /a", `unknown method "get"`},
		{"HEAD /a", `unknown method "HEAD"`},
		{" /a", `unknown method ""`},
		{"/a//b", "empty segment"},
		{"/a/", "empty segment"},
		{"//", "empty segment"},
		{"/a{x}", `segment "a{x}": a wildcard must be a whole segment`},
		{"/{x}a", `segment "{x}a": a wildcard must be a whole segment`},
		{"/x}", `segment "x}": a wildcard must be a whole segment`},
		{"/{}", `wildcard "{}": name is not a Go identifier`},
		{"/{...}", `wildcard "{...}": name is not a Go identifier`},
		{"/{1x}", `wildcard "{1x}": name is not a Go identifier`},
		{"/{a-b}", `wildcard "{a-b}": name is not a Go identifier`},
		{"/{x...}/a", `wildcard "{x...}" is not last`},
		{"/{x}/{x}", `wildcard "x" appears twice`},
		{"/{x}/{x...}", `wildcard "x" appears twice`},
		{"/%zz", `segment "%zz": invalid URL escape "%zz"`},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			got := panicOf(func() { workers.NewMux().Route(tt.pattern, patternHandler()) })
			if want := fmt.Sprintf("workers: mux: pattern %q: %s", tt.pattern, tt.want); !strings.HasPrefix(got, want) {
				t.Errorf("Route(%q) panicked with\n%q\nwant prefix %q", tt.pattern, got, want)
			}
		})
	}
	t.Run("nil handler", func(t *testing.T) {
		if got := panicOf(func() { workers.NewMux().Route("/a", nil) }); got != `workers: mux: pattern "/a": nil handler` {
			t.Errorf("Route(nil) panicked with %q", got)
		}
		if got := panicOf(func() { workers.NewMux().RouteFunc("/a", nil) }); got != `workers: mux: pattern "/a": nil handler` {
			t.Errorf("RouteFunc(nil) panicked with %q", got)
		}
	})
	t.Run("good patterns", func(t *testing.T) {
		m := workers.NewMux()
		for _, p := range []string{"GET  \t/spaces", "/a b", "/{_x1}", "/{ünï}/{r...}", "/%7Bx%7D", "/a.b/~/*/>"} {
			if got := panicOf(func() { m.Route(p, patternHandler()) }); got != "" {
				t.Errorf("Route(%q) panicked: %s", p, got)
			}
		}
	})
}

// panicOf returns what f panics with, as a string; "" if it returns.
func panicOf(f func()) (msg string) {
	defer func() {
		if v := recover(); v != nil {
			msg = fmt.Sprint(v)
		}
	}()
	f()
	return ""
}

func TestMuxNotCoAP(t *testing.T) {
	m := workers.NewMux()
	m.Route("/{all...}", patternHandler())
	var w recorder
	err := m.Handle(context.Background(), &w, &workers.Request{Protocol: schemas.ProtocolRaw, Body: []byte("x")})
	if err == nil || err.Error() != "workers: mux: not a CoAP request" {
		t.Errorf("Handle = %v, want not a CoAP request", err)
	}
	if len(w.header) != 0 || w.body.Len() != 0 {
		t.Errorf("Handle wrote %v %q", w.header, w.body.String())
	}
}

func TestMuxBadPath(t *testing.T) {
	m := workers.NewMux()
	m.Route("/{all...}", patternHandler())
	r := coapRequest("GET")
	r.CoAP.Path = "" // as parsed from a malformed path header
	if got := route(t, m, r); got != "4.00" {
		t.Errorf("request without path answered %q, want 4.00", got)
	}
}

func TestMuxEmpty(t *testing.T) {
	var m workers.Mux
	if got := route(t, &m, coapRequest("GET")); got != "4.04" {
		t.Errorf("zero Mux answered %q, want 4.04", got)
	}
	if got := m.Subjects(prefix, 5683); got != nil {
		t.Errorf("zero Mux Subjects = %q, want nil", got)
	}
}

// TestMuxPathValuesReset checks that the Mux replaces path values set
// before it routes, as a nested Mux does.
func TestMuxPathValuesReset(t *testing.T) {
	inner := workers.NewMux()
	inner.Route("/a/{y}", patternHandler("x", "y"))
	outer := workers.NewMux()
	outer.Route("/{x}/{y}", inner)
	if got, want := route(t, outer, coapRequest("GET", "a", "b")), "/a/{y} x= y=b"; got != want {
		t.Errorf("nested Mux wrote %q, want %q", got, want)
	}
}

func TestMuxSubjects(t *testing.T) {
	const in = "udpgate.in.5683."
	tests := []struct {
		name     string
		patterns []string
		want     []string
	}{
		{"literal", []string{"GET /time"}, []string{"GET.time"}},
		{"root", []string{"GET /"}, []string{"GET"}},
		{"any method", []string{"/things/{id}"}, []string{"*.things.*"}},
		{"rest", []string{"GET /files/{path...}"}, []string{"GET.files", "GET.files.>"}},
		{"rest at root", []string{"/{path...}"}, []string{"*", "*.>"}},
		{"escaped literals", []string{"GET /a.b/~x/*/>/żółw/ /a%2Fb"},
			[]string{"GET.a~2Eb.~7Ex.~2A.~3E.~C5~BC~C3~B3~C5~82w.~20.a~2Fb"}},
		{"several", []string{"GET /time", "POST /echo", "GET /hello"}, []string{"GET.hello", "GET.time", "POST.echo"}},
		{"method covered by any method", []string{"GET /a", "/a"}, []string{"*.a"}},
		{"literal covered by wildcard", []string{"GET /things/new", "/things/{id}", "DELETE /things/{id}"}, []string{"*.things.*"}},
		{"covered by rest", []string{"GET /files/readme", "GET /files/{d}/index", "GET /files/{path...}"},
			[]string{"GET.files", "GET.files.>"}},
		{"root covered by rest", []string{"GET /", "/{path...}", "POST /a/b"}, []string{"*", "*.>"}},
		{"not covered: other method", []string{"GET /files/{path...}", "PUT /files/x"},
			[]string{"GET.files", "GET.files.>", "PUT.files.x"}},
		{"not covered: rest of other length", []string{"GET /a/b/{r...}", "GET /a"}, []string{"GET.a", "GET.a.b", "GET.a.b.>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := workers.NewMux()
			for _, p := range tt.patterns {
				m.Route(p, patternHandler())
			}
			var want []string
			for _, s := range tt.want {
				want = append(want, in+s)
			}
			if got := m.Subjects(prefix, 5683); !slices.Equal(got, want) {
				t.Errorf("Subjects = %q\nwant       %q", got, want)
			}
		})
	}
	t.Run("prefix and subject", func(t *testing.T) {
		m := workers.NewMux()
		m.Route("GET /a/b", patternHandler())
		want := schemas.CoAPSubject("my.gw", 61616, "GET", []string{"a", "b"})
		if got := m.Subjects("my.gw", 61616); !slices.Equal(got, []string{want}) {
			t.Errorf("Subjects = %q, want [%q]", got, want)
		}
	})
}

// TestMuxSubjectsCoverRequests checks Subjects against the routing: a
// request's subject matches one of the filters exactly when the Mux has a
// pattern for its path (whatever the method), so a group consumes what it
// serves and nothing else.
func TestMuxSubjectsCoverRequests(t *testing.T) {
	m := workers.NewMux()
	for _, p := range []string{"GET /time", "/things/{id}", "GET /things/new", "GET /files/{path...}",
		"GET /files/readme", "PUT /", "POST /a/{x}/{rest...}", "DELETE /a/b/{y}"} {
		m.Route(p, patternHandler())
	}
	filters := m.Subjects(prefix, 5683)
	var requests [][]string
	for _, a := range []string{"time", "things", "files", "a", "b"} {
		requests = append(requests, []string{a})
		for _, b := range []string{"new", "readme", "b", "7", "x.y"} {
			requests = append(requests, []string{a, b})
			for _, c := range []string{"c", "*"} {
				requests = append(requests, []string{a, b, c}, []string{a, b, c, "d"})
			}
		}
	}
	requests = append(requests, nil)
	for _, method := range []string{"GET", "PUT", "POST", "DELETE"} {
		for _, segs := range requests {
			subject := schemas.CoAPSubject(prefix, 5683, method, segs)
			covered := slices.ContainsFunc(filters, func(f string) bool { return subjectMatches(f, subject) })
			routed := !strings.HasPrefix(route(t, m, coapRequest(method, segs...)), "4.")
			if covered != routed {
				t.Errorf("%s: matched by filters %v, routed %v (filters %q)", subject, covered, routed, filters)
			}
		}
	}
	// The filters do not overlap, as JetStream requires.
	for i, a := range filters {
		for _, b := range filters[i+1:] {
			if filtersOverlap(a, b) {
				t.Errorf("filters %q and %q overlap", a, b)
			}
		}
	}
}

// filtersOverlap reports whether some subject matches both filters.
func filtersOverlap(a, b string) bool {
	x, y := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(x) && i < len(y); i++ {
		switch {
		case x[i] == ">" || y[i] == ">":
			return true
		case x[i] != "*" && y[i] != "*" && x[i] != y[i]:
			return false
		}
	}
	return len(x) == len(y)
}

// subjectMatches reports whether the NATS subject matches filter.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s), tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(f) == len(s)
}

// itemsMux is a small CoAP API over a map, for the tests that run a Mux
// behind a Server.
func itemsMux() *workers.Mux {
	m := workers.NewMux()
	m.RouteFunc("GET /items/{id}", func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
		res := workers.NewCoAPResponse(w)
		res.SetContentFormat(50)
		res.SetMaxAge(time.Minute)
		res.SetETag([]byte{1, 2})
		_, err := fmt.Fprintf(res, `{"id":%q,"q":%q,"token":"%x","mid":%d,"type":%q}`,
			r.PathValue("id"), r.CoAP.Query, r.CoAP.Token, r.CoAP.MessageID, r.CoAP.Type)
		return err
	})
	m.RouteFunc("POST /items", func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
		res := workers.NewCoAPResponse(w)
		res.SetCode(workers.Created)
		res.SetLocationPath("items", string(r.Body))
		res.SetLocationQuery("v=1")
		return nil
	})
	m.RouteFunc("/fail", func(context.Context, workers.ResponseWriter, *workers.Request) error {
		return errors.New("boom")
	})
	return m
}

// TestMuxServe runs a Mux behind a Server whose Subjects are the Mux's:
// the group receives the requests it has patterns for, and only those.
func TestMuxServe(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) { testMuxServe(t, d) })
	}
}

func testMuxServe(t *testing.T, d workers.Delivery) {
	e := newEnv(t)
	m := itemsMux()
	s := &workers.Server{NATS: e.nc, Delivery: d, Group: "items", Subjects: m.Subjects(prefix, coapPort), Handler: m, Concurrency: 1}
	start(t, s)

	// Not served: published first, they would be handled first, and with
	// Concurrency 1 answered first.
	e.publish(t, e.coapMsg("unserved-path", "GET", []string{"nope"}, nil, nil))
	e.publish(t, e.coapMsg("unserved-method", "PUT", []string{"items", "7"}, nil, nil))
	e.publish(t, e.coapMsg("unserved-depth", "GET", []string{"items", "7", "x"}, nil, nil))

	tests := []struct {
		id     string
		msg    *nats.Msg
		status string
		body   string
		header map[string]string // CoAP reply headers, "" for absent
	}{
		{
			id:   "get",
			msg:  e.coapMsg("get", "GET", []string{"items", "a b/ż"}, []string{"x=1", "y&z"}, nil),
			body: `{"id":"a b/ż","q":["x=1" "y&z"],"token":"0a0b","mid":513,"type":"CON"}`,
			header: map[string]string{
				schemas.HeaderCoAPCode: "", schemas.HeaderCoAPContentFormat: "50",
				schemas.HeaderCoAPMaxAge: "60", schemas.HeaderCoAPETag: "0102",
			},
		},
		{
			id:  "post",
			msg: e.coapMsg("post", "POST", []string{"items"}, nil, []byte("8")),
			header: map[string]string{
				schemas.HeaderCoAPCode: "2.01", schemas.HeaderCoAPContentFormat: "",
				schemas.HeaderCoAPLocationPath: "/items/8", schemas.HeaderCoAPLocationQuery: "v=1",
			},
		},
		{
			id:     "fail",
			msg:    e.coapMsg("fail", "DELETE", []string{"fail"}, nil, nil),
			status: schemas.StatusError,
			header: map[string]string{schemas.HeaderCoAPCode: ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			e.publish(t, tt.msg)
			r := e.next(t)
			if got := replyID(r); got != tt.id {
				t.Fatalf("reply to %s, want %s", got, tt.id)
			}
			if got := r.Header.Get(schemas.HeaderStatus); got != tt.status {
				t.Errorf("status %q, want %q", got, tt.status)
			}
			if string(r.Data) != tt.body {
				t.Errorf("body %s, want %s", r.Data, tt.body)
			}
			for k, want := range tt.header {
				if got := r.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
	waitStats(t, s, workers.Stats{Handled: 3, Replied: 2, Failed: 1})
	if d != workers.Durable {
		return
	}
	if info := e.waitSettled(t, "items"); info.Delivered.Consumer != 3 || info.NumPending != 0 {
		t.Errorf("consumer delivered %d, %d pending; want 3, 0: it got requests it does not serve",
			info.Delivered.Consumer, info.NumPending)
	}
}

// TestMuxServeAnswers runs a Mux behind a Server that takes every request
// of the port, so that the Mux itself answers what it does not serve.
func TestMuxServeAnswers(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			s := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "all", Handler: itemsMux(),
				Subjects: []string{schemas.InSubject(prefix, coapPort) + ".>", subject},
			}
			start(t, s)
			bad := e.coapMsg("bad-path", "GET", []string{"items", "1"}, nil, nil)
			bad.Header.Set(schemas.HeaderCoAPRequest, "GET /items/%zz")
			tests := []struct {
				id, code, status string
				msg              *nats.Msg
			}{
				{"not-found", "4.04", "", e.coapMsg("not-found", "GET", []string{"nope"}, nil, nil)},
				{"root", "4.04", "", e.coapMsg("root", "GET", nil, nil, nil)},
				{"method-not-allowed", "4.05", "", e.coapMsg("method-not-allowed", "PUT", []string{"items", "7"}, nil, nil)},
				{"bad-path", "4.00", "", bad},
				{"raw-request", "", schemas.StatusError, e.request(subject, "raw-request", []byte("x"), time.Time{})},
			}
			for _, tt := range tests {
				t.Run(tt.id, func(t *testing.T) {
					e.publish(t, tt.msg)
					r := e.next(t)
					if id := replyID(r); id != tt.id {
						t.Fatalf("reply to %q, want %q", id, tt.id)
					}
					if code, status := r.Header.Get(schemas.HeaderCoAPCode), r.Header.Get(schemas.HeaderStatus); code != tt.code || status != tt.status || len(r.Data) != 0 {
						t.Errorf("reply code %q, status %q, body %q; want %q, %q, empty", code, status, r.Data, tt.code, tt.status)
					}
				})
			}
		})
	}
}

func BenchmarkMux(b *testing.B) {
	m := workers.NewMux()
	for _, p := range []string{"GET /time", "POST /echo", "GET /hello", "/things/{id}", "GET /things/new",
		"DELETE /things/{id}", "/things/{id}/parts/{n}", "GET /files/{path...}", "GET /files/readme"} {
		m.RouteFunc(p, func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil })
	}
	r := coapRequest("GET", "things", "7", "parts", "2")
	var w recorder
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Handle(ctx, &w, r); err != nil {
			b.Fatal(err)
		}
	}
}
