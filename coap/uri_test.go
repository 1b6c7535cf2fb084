package coap

import (
	"slices"
	"testing"
)

func TestSplitPathAndQuery(t *testing.T) {
	for _, tt := range []struct {
		name string
		fn   func(string) []string
		in   string
		want []string
	}{
		{"path root", SplitPath, "/", nil},
		{"path empty", SplitPath, "", nil},
		{"path segments", SplitPath, "/a/b%2Fc", []string{"a", "b/c"}},
		{"path without slash", SplitPath, "a/b", []string{"a", "b"}},
		{"path bad escape", SplitPath, "/a%zz", []string{"a%zz"}},
		{"query", SplitQuery, "a=1%262&b", []string{"a=1&2", "b"}},
		{"query plus", SplitQuery, "q=a+b", []string{"q=a+b"}},
		{"query space", SplitQuery, "text=a%20b%2Bc", []string{"text=a b+c"}},
		{"query bad escape", SplitQuery, "a=%zz", []string{"a="}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.fn(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// A Uri-Query option is percent-encoded as RFC 3986 says, name and value
// apart: what any RFC 3986 decoder (url.PathUnescape here, the worker
// SDK's, a worker in another language) gets back is the option.
func TestQueryEscaping(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"unit=C", "unit=C"},
		{"verbose", "verbose"},
		{"text=a b+c", "text=a%20b%2Bc"},
		{"a&b=c=d", "a%26b=c%3Dd"},
		{"k\u00e9y=%", "k%C3%A9y=%25"},
	} {
		got := string(appendQueryEscaped(nil, []byte(tt.in)))
		if got != tt.want {
			t.Errorf("%q escaped %q, want %q", tt.in, got, tt.want)
		}
		if len(got) > escapedMax([]byte(tt.in)) {
			t.Errorf("%q: %d bytes, more than escapedMax %d", tt.in, len(got), escapedMax([]byte(tt.in)))
		}
		if back := SplitQuery(got); len(back) != 1 || back[0] != tt.in {
			t.Errorf("%q: SplitQuery gives %q back", tt.in, back)
		}
	}
}
