package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// imageSources returns the files, relative to the repository's root, that
// deploy/Dockerfile's `go build` reads: go.mod, go.sum, and the Go and
// embedded files of every package of this module the binary imports, as
// the image builds it (Linux, CGO_ENABLED=0).
func imageSources(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{"\n"}}{{end}}{{end}}`, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"go.mod", "go.sum"}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		dir, err := filepath.Rel(root, f[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range f[1:] {
			files = append(files, filepath.ToSlash(filepath.Join(dir, name)))
		}
	}
	if !slices.Contains(files, "main.go") || !slices.Contains(files, "bench/nginx/udp-proxy.conf") {
		t.Fatalf("go list found no main.go or embedded file: %v", files)
	}
	return files
}

// notForTheImage are paths that must stay out of the build context: the
// repository's history, a `udpgate run`'s data and binary, npm's
// packages, captures, and what changes without changing the binary.
var notForTheImage = []string{
	".git/HEAD",
	".git/objects/pack/pack-1.pack",
	"udpgate-data/nats/jetstream/UDPGATE_IN/msgs/1.blk",
	"udpgate",
	"workers/examples/node/node_modules/nats/index.js",
	"capture.pcap",
	"bench/out.pcapng",
	"ingress/ingress_test.go",
	"coap/testdata/fuzz/FuzzDecode/0a1b",
	"docs/operations.md",
}

// contextProblems says what is wrong with the build context that patterns
// (a .dockerignore's) leave, as Docker's own matcher applies them.
func contextProblems(patterns, need, keepOut []string) []string {
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, f := range need {
		if excluded, err := pm.MatchesOrParentMatches(f); err != nil || excluded {
			problems = append(problems, f+" is not sent, and go build needs it")
		}
	}
	for _, f := range keepOut {
		if excluded, err := pm.MatchesOrParentMatches(f); err != nil || !excluded {
			problems = append(problems, f+" is sent")
		}
	}
	return problems
}

// TestDockerignore checks .dockerignore with the parser and matcher that
// docker build uses: the context has every file the image's go build
// reads, and none of notForTheImage. Broken variants are refused.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	need := imageSources(t)
	without := func(p string) []string {
		return slices.DeleteFunc(slices.Clone(patterns), func(q string) bool { return q == p })
	}
	for _, tc := range []struct {
		name     string
		patterns []string
		want     string // a problem reported; "" for none
	}{
		{"as written", patterns, ""},
		{"history sent", without(".git"), ".git/HEAD is sent"},
		{"run data sent", without("udpgate-data"), "udpgate-data/nats/jetstream/UDPGATE_IN/msgs/1.blk is sent"},
		{"node_modules sent", without("**/node_modules"), "node_modules/nats/index.js is sent"},
		{"sources left out", append(slices.Clone(patterns), "internal"), "internal/cli/root.go is not sent"},
		{"embedded file left out", append(slices.Clone(patterns), "**/*.conf"), "bench/nginx/udp-proxy.conf is not sent"},
		{"go.sum left out", append(slices.Clone(patterns), "go.*"), "go.sum is not sent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			problems := contextProblems(tc.patterns, need, notForTheImage)
			switch {
			case tc.want == "" && len(problems) > 0:
				t.Errorf(".dockerignore:\n%s", strings.Join(problems, "\n"))
			case tc.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }):
				t.Errorf("not refused: want %q among %q", tc.want, problems)
			}
		})
	}
}
