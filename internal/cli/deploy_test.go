package cli

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// deployFiles are docker-compose.yml and every file in deploy/, except the
// Grafana dashboards.
func deployFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"docker-compose.yml"}
	err := filepath.WalkDir("deploy", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path == filepath.Join("deploy", "grafana") {
			return fs.SkipDir
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDeployFiles checks docker-compose.yml and deploy/ as text (CI has no
// Docker engine): every UDPGATE_* variable named there is one udpgate
// reads, a secret's value comes only from the environment, and the
// Dockerfile's base images are pinned.
func TestDeployFiles(t *testing.T) {
	known := config.KnownVariables()
	// The default stream names look like variables: NATS permissions name them.
	known = append(known, schemas.StreamIn, schemas.StreamReplies)
	varRE := regexp.MustCompile(`UDPGATE_[A-Z_]+`)
	// A secret value may only come from the environment of compose itself.
	secretRE := regexp.MustCompile(`(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID):\s*(\S*)`)
	for _, f := range deployFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, v := range varRE.FindAllString(s, -1) {
			if !slices.Contains(known, v) {
				t.Errorf("%s: %s is not a udpgate variable", f, v)
			}
		}
		if filepath.Base(f) == "Dockerfile" {
			for _, m := range regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(s, -1) {
				if msg := imageProblem(m[1]); msg != "" {
					t.Errorf("%s: %s", f, msg)
				}
			}
		}
		for _, m := range secretRE.FindAllStringSubmatch(s, -1) {
			if !strings.HasPrefix(m[2], "${") {
				t.Errorf("%s: %s is set in the file, not taken from the environment", f, m[1])
			}
		}
	}
}

func mapsEqual(a, b map[int]bool) bool { return slices.Equal(keys(a), keys(b)) }

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
