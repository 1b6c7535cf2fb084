package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/workers/builtin"
)

// TestDeployFiles checks docker-compose.yml and deploy/ statically (CI has
// no Docker engine): every UDPGATE_* variable set there is one udpgate
// reads, every command is one of its subcommands, every built-in worker
// exists, and listeners parse.
func TestDeployFiles(t *testing.T) {
	files := []string{"docker-compose.yml", "deploy/Dockerfile", "deploy/README.md"}
	known := knownVariables()
	varRE := regexp.MustCompile(`UDPGATE_[A-Z_]+`)
	cmdRE := regexp.MustCompile(`command: \["([a-z]+)"(?:, "([a-z]+)")?\]`)
	// A secret value may only come from the environment of compose itself.
	secretRE := regexp.MustCompile(`(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID):\s*(\S*)`)
	listenersRE := regexp.MustCompile(`UDPGATE_LISTENERS: (\S+)`)
	for _, f := range files {
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
		for _, m := range cmdRE.FindAllStringSubmatch(s, -1) {
			if !slices.Contains([]string{"gateway", "worker", "run", "lambda", "help"}, m[1]) {
				continue // another image's command (nats)
			}
			if m[1] == "worker" && !slices.Contains(builtin.Names(), m[2]) {
				t.Errorf("%s: unknown worker %q", f, m[2])
			}
		}
		for _, m := range listenersRE.FindAllStringSubmatch(s, -1) {
			if _, err := parseListeners(m[1]); err != nil {
				t.Errorf("%s: UDPGATE_LISTENERS: %v", f, err)
			}
		}
		for _, m := range secretRE.FindAllStringSubmatch(s, -1) {
			if !strings.HasPrefix(m[2], "${") {
				t.Errorf("%s: %s is set in the file, not taken from the environment", f, m[1])
			}
		}
		if f == "docker-compose.yml" {
			for _, want := range []string{"9000:9000/udp", "9001:9001/udp", "5683:5683/udp", "7000:7000/udp", `["worker", "coap"]`, `["worker", "places"]`, `["lambda"]`, "dockerfile: deploy/Dockerfile", `["worker", "echo"]`, `["gateway"]`} {
				if !strings.Contains(s, want) {
					t.Errorf("%s lacks %q", f, want)
				}
			}
		}
	}
}
