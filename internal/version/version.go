// Package version says which udpgate this is: the version and commit
// injected at build time, or read from the build information the Go
// toolchain embeds (a `go install ...@v1.2.3` knows its version, a build
// in a git checkout its commit).
//
//	go build -ldflags "-X github.com/udpgate/udpgate/internal/version.Version=v1.2.3 -X github.com/udpgate/udpgate/internal/version.Commit=$(git rev-parse HEAD)" .
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at build time with -ldflags -X; empty means "read the build
// information".
var (
	Version string
	Commit  string
)

// Info is the version of this binary.
type Info struct {
	Version   string `json:"version"`    // "devel" when unknown
	Commit    string `json:"commit"`     // "" when unknown; "+dirty" when built from a modified tree
	GoVersion string `json:"go_version"` // runtime.Version()
}

// Get returns the version of this binary.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					info.Commit = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if info.Commit != "" && dirty {
				info.Commit += "+dirty"
			}
		}
	}
	if info.Version == "" {
		info.Version = "devel"
	}
	return info
}

// String is the one-line form `udpgate version` prints.
func (i Info) String() string {
	commit := i.Commit
	if commit == "" {
		commit = "unknown commit"
	}
	return fmt.Sprintf("udpgate %s (%s, %s)", i.Version, commit, i.GoVersion)
}
