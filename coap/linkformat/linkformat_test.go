package linkformat

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want []Link
	}{
		{"", nil},
		{"</time>", []Link{{Path: "/time"}}},
		{`</time>;rt="time";ct=0,</echo>`, []Link{{"/time", `rt="time";ct=0`}, {"/echo", ""}}},
		{` </a> ; rt="x" , </b>`, []Link{{"/a", `rt="x"`}, {"/b", ""}}},
		{`</a>;title="one, two; three",</b>`, []Link{{"/a", `title="one, two; three"`}, {"/b", ""}}},
		{`</a,b>;rt=x`, []Link{{"/a,b", "rt=x"}}},
		{`</q>;title="say \"hi\", then",</r>`, []Link{{"/q", `title="say \"hi\", then"`}, {"/r", ""}}},
		{`no target,</b>,<>`, []Link{{"/b", ""}}},
	}
	for _, tt := range tests {
		if got := Parse(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("Parse(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormatRoundTrip(t *testing.T) {
	const s = `</a>;rt="alpha sensor";ct=0,</b>,</c>;title="x, y"`
	if got := Format(Parse(s)); got != s {
		t.Errorf("Format(Parse(%q)) = %q", s, got)
	}
}

func TestFilter(t *testing.T) {
	links := Parse(`</a>;rt="alpha sensor";ct=0,</b>;rt=beta;if="core.a",</time>;ct=0;title="a;b"`)
	tests := []struct {
		name, want, out string
	}{
		{"", "", Format(links)},
		{"rt", "alpha", "</a>"},
		{"rt", "sensor", "</a>"},
		{"rt", "beta", "</b>"},
		{"rt", "al*", "</a>"},
		{"rt", "alpha sensor", ""},
		{"ct", "0", "</a>,</time>"},
		{"if", "core.*", "</b>"},
		{"href", "/t*", "</time>"},
		{"href", "/b", "</b>"},
		{"title", "a;b", "</time>"},
		{"rt", "*", "</a>,</b>"},
		{"nope", "x", ""},
	}
	for _, tt := range tests {
		var paths []string
		for _, l := range Filter(links, tt.name, tt.want) {
			paths = append(paths, "<"+l.Path+">")
		}
		if tt.name == "" {
			if got := Format(Filter(links, "", "")); got != tt.out {
				t.Errorf("no filter: %q", got)
			}
			continue
		}
		if got := strings.Join(paths, ","); got != tt.out {
			t.Errorf("Filter %s=%s: %s, want %s", tt.name, tt.want, got, tt.out)
		}
	}
}

func TestQuery(t *testing.T) {
	for _, tt := range []struct {
		in          []string
		name, value string
		ok          bool
	}{
		{nil, "", "", false},
		{[]string{"verbose"}, "", "", false},
		{[]string{"verbose", "rt=temp", "ct=0"}, "rt", "temp", true},
		{[]string{"=x", "href=/a"}, "href", "/a", true},
	} {
		name, value, ok := Query(tt.in)
		if name != tt.name || value != tt.value || ok != tt.ok {
			t.Errorf("Query(%q) = %q, %q, %v", tt.in, name, value, ok)
		}
	}
}

// FuzzParse: any text parses without panicking, and what Parse reads
// Format writes so that Parse reads it back the same.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`</time>;rt="time";ct=0,</echo>`, `</a>;title="x, \"y\""`, `<`, `">,<`, `<a>;"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		links := Parse(s)
		again := Parse(Format(links))
		if !slices.Equal(links, again) {
			t.Errorf("Parse(Format(Parse(%q))) = %q, want %q", s, again, links)
		}
		for _, l := range links {
			l.Matches("rt", "x*")
			l.Matches("href", "/")
		}
	})
}
