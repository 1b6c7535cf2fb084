package schemas

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscapeToken(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "~"},
		{"sensors", "sensors"},
		{"Temp-1_a", "Temp-1_a"},
		{"a.b", "a~2Eb"},
		{"*", "~2A"},
		{">", "~3E"},
		{"~", "~7E"},
		{"a b\t", "a~20b~09"},
		{"żółw", "~C5~BC~C3~B3~C5~82w"},
		{"node.example.com", "node~2Eexample~2Ecom"},
	}
	for _, tt := range tests {
		got := EscapeToken(tt.in)
		if got != tt.want {
			t.Errorf("EscapeToken(%q) = %q, want %q", tt.in, got, tt.want)
		}
		back, ok := UnescapeToken(got)
		if !ok || back != tt.in {
			t.Errorf("UnescapeToken(%q) = %q, %v; want %q", got, back, ok, tt.in)
		}
	}
	for _, bad := range []string{"", "a.b", "~2", "~zz", "~41", "~2e", "a~", "*", ">"} {
		if s, ok := UnescapeToken(bad); ok {
			t.Errorf("UnescapeToken(%q) accepted, = %q", bad, s)
		}
	}
}

func TestFallbackSubjects(t *testing.T) {
	if got := FallbackSubject("acme.udp", "acme.udp.in.5683.GET.in"); got != "acme.udp.fallback.5683.GET.in" {
		t.Errorf("FallbackSubject = %q", got)
	}
	for filter, want := range map[string]string{
		"udpgate.in.>":             "udpgate.fallback.>",
		"udpgate.in.5683.GET.time": "udpgate.fallback.5683.GET.time",
		"udpgate.in.*.POST":        "udpgate.fallback.*.POST",
		"udpgate.>":                "",
		"udpgate.inx.1":            "",
		"other.in.1":               "",
	} {
		got, ok := FallbackFilter("udpgate", filter)
		if got != want || ok != (want != "") {
			t.Errorf("FallbackFilter(%q) = %q, %v; want %q", filter, got, ok, want)
		}
	}
	if got, ok := InOfFallback("udpgate", "udpgate.fallback.9000"); !ok || got != "udpgate.in.9000" {
		t.Errorf("InOfFallback = %q, %v", got, ok)
	}
	if _, ok := InOfFallback("udpgate", "udpgate.in.9000"); ok {
		t.Error("InOfFallback took a request subject")
	}
}

func TestSubjects(t *testing.T) {
	if got := InSubject("udpgate", 9000); got != "udpgate.in.9000" {
		t.Errorf("InSubject = %q", got)
	}
	if got := AppendInSubject([]byte("x "), "udpgate", 9000); string(got) != "x udpgate.in.9000" {
		t.Errorf("AppendInSubject = %q", got)
	}
	if got := CoAPSubject("udpgate", 5683, "GET", []string{"a.b", "", "c"}); got != "udpgate.in.5683.GET.a~2Eb.~.c" {
		t.Errorf("CoAPSubject = %q", got)
	}
	if got := AppendCoAPSubject([]byte("x "), "udpgate", 5683, "GET", nil); string(got) != "x udpgate.in.5683.GET" {
		t.Errorf("AppendCoAPSubject = %q", got)
	}
	if got, want := string(AppendRPCSubject(nil, "udpgate", 7000, "places.v1", "Get")), RPCSubject("udpgate", 7000, "places.v1", "Get"); got != want || got != "udpgate.in.7000.places~2Ev1.Get" {
		t.Errorf("AppendRPCSubject = %q, RPCSubject = %q", got, want)
	}
	if got := InWildcard("acme.udp"); got != "acme.udp.in.>" {
		t.Errorf("InWildcard = %q", got)
	}
	if got := ReplySubject("udpgate", "gw-1.eu"); got != "udpgate.reply.gw-1~2Eeu" {
		t.Errorf("ReplySubject = %q", got)
	}
}

func FuzzEscapeToken(f *testing.F) {
	for _, s := range []string{"", "a", "a.b", "~", "~7E", "żółw", "\x00\xff", " > * "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := EscapeToken(s)
		if tok == "" || strings.ContainsAny(tok, ".*> \t\r\n") || !utf8.ValidString(tok) {
			t.Fatalf("EscapeToken(%q) = %q is not a subject token", s, tok)
		}
		if app := AppendEscapedToken([]byte("x."), s); string(app) != "x."+tok {
			t.Fatalf("AppendEscapedToken(%q) = %q, want %q", s, app, "x."+tok)
		}
		if EscapedLen(s) != len(tok) {
			t.Fatalf("EscapedLen(%q) = %d, len(EscapeToken) = %d", s, EscapedLen(s), len(tok))
		}
		back, ok := UnescapeToken(tok)
		if !ok || back != s {
			t.Fatalf("round trip %q -> %q -> %q, %v", s, tok, back, ok)
		}
		// Any token that unescapes is canonical: escaping gives it back.
		if u, ok := UnescapeToken(s); ok && EscapeToken(u) != s {
			t.Fatalf("UnescapeToken(%q) = %q, which escapes to %q", s, u, EscapeToken(u))
		}
	})
}

func TestMatch(t *testing.T) {
	for _, tt := range []struct {
		filter, subject string
		want            bool
	}{
		{"udpgate.in.9000", "udpgate.in.9000", true},
		{"udpgate.in.9000", "udpgate.in.9001", false},
		{"udpgate.in.9000", "udpgate.in.9000.x", false},
		{"udpgate.in.9000.>", "udpgate.in.9000", false},
		{"udpgate.in.9000.>", "udpgate.in.9000.GET", true},
		{"udpgate.in.9000.>", "udpgate.in.9000.GET.a.b", true},
		{"udpgate.in.*", "udpgate.in.9000", true},
		{"udpgate.in.*", "udpgate.in.9000.GET", false},
		{"udpgate.in.5683.*.sensors.*", "udpgate.in.5683.GET.sensors.7", true},
		{"udpgate.in.5683.*.sensors.*", "udpgate.in.5683.GET.sensors", false},
		{">", "a", true},
		{"a.b", "a", false},
	} {
		if got := Match(tt.filter, tt.subject); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.subject, got, tt.want)
		}
	}
}

func TestParseListener(t *testing.T) {
	for _, tt := range []struct {
		name     string
		port     uint16
		protocol string
		ok       bool
	}{
		{"5683/coap", 5683, "coap", true},
		{Listener(9000, ProtocolRaw), 9000, ProtocolRaw, true},
		{"70000/raw", 0, "", false},
		{"9000", 0, "", false},
		{"9000/", 0, "", false},
		{"/raw", 0, "", false},
		{"9000/raw/x", 0, "", false},
	} {
		port, protocol, ok := ParseListener(tt.name)
		if port != tt.port || protocol != tt.protocol || ok != tt.ok {
			t.Errorf("ParseListener(%q) = %d, %q, %v", tt.name, port, protocol, ok)
		}
	}
}

// ce-source is a URI-reference: a node name that is not a plain host name
// is percent-encoded, and ParseSource gives it back.
func TestSourceEscapesTheNode(t *testing.T) {
	for _, tt := range []struct{ node, want string }{
		{"gw-1", "udpgate://gw-1/9000/raw"},
		{"gw.eu_west~1", "udpgate://gw.eu_west~1/9000/raw"},
		{"nœud", "udpgate://n%C5%93ud/9000/raw"},
		{"my node", "udpgate://my%20node/9000/raw"}, // RFC 3986 allows it; Go's url.Parse does not (UDPGATE_NODE refuses it)
		{"a/b:c@d", "udpgate://a%2Fb%3Ac%40d/9000/raw"},
	} {
		src := Source(tt.node, Listener(9000, ProtocolRaw))
		if src != tt.want {
			t.Errorf("Source(%q) = %q, want %q", tt.node, src, tt.want)
		}
		if ValidNode(tt.node) {
			// What the CloudEvents Go SDK does with a source.
			if u, err := url.Parse(src); err != nil || u.Scheme != "udpgate" {
				t.Errorf("%q is not a URI: %v", src, err)
			}
		}
		node, port, protocol, ok := ParseSource(src)
		if !ok || node != tt.node || port != 9000 || protocol != ProtocolRaw {
			t.Errorf("ParseSource(%q) = %q, %d, %q, %v", src, node, port, protocol, ok)
		}
	}
}

func TestValidNode(t *testing.T) {
	for _, n := range []string{"gw-1", "host.example.com", "nœud", "a_b~c"} {
		if !ValidNode(n) {
			t.Errorf("ValidNode(%q) = false", n)
		}
	}
	for _, n := range []string{"", "my node", "a/b", "a:b", "a@b", "100%", string(make([]byte, 254))} {
		if ValidNode(n) {
			t.Errorf("ValidNode(%q) = true", n)
		}
	}
}
