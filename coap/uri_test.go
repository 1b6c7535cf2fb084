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
		{"query plus", SplitQuery, "q=a+b", []string{"q=a b"}},
		{"query bad escape", SplitQuery, "a=%zz", []string{"a="}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.fn(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
