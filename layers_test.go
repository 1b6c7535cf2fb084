package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// layers ranks every package of the module: a package imports only
// packages of a lower rank, or the package it is part of (workers/builtin
// imports workers). docs/architecture.md's package map says what each
// one owns. A new package needs a rank here.
var layers = map[string]int{
	// Commands.
	"":             100,
	"internal/cli": 90,
	// The suites, which start whole nodes.
	"bench/suite":  80,
	"bench/faults": 80,
	// One node: embedded NATS, a gateway, built-in workers.
	"internal/node": 70,
	// Metrics and health of gateways and workers.
	"observe": 60,
	// Leased listeners over HTTP and NATS, on a gateway.
	"bridge": 55,
	// The gateway: ingress, egress and the table between them.
	"gateway": 50,
	// Tools that read or feed the capture, and clients.
	"pcap":        45,
	"replay":      45,
	"bench":       45,
	"bench/nginx": 45,
	"client":      44,
	// Configuration from the environment (it names worker deliveries).
	"internal/config": 42,
	// The request path's halves and the worker side.
	"ingress":                  40,
	"ws":                       40,
	"egress":                   40,
	"workers":                  40,
	"workers/builtin":          40,
	"workers/lambda":           40,
	"workers/examples/sensors": 40,
	"workers/examples/upper":   40,
	// Protocols.
	"coap": 30,
	"rpc":  30,
	"dtls": 30,
	// The contract and the pieces everything shares.
	"schemas":            10,
	"schemas/rpcpb":      10,
	"schemas/placespb":   10,
	"exchange":           10,
	"guard":              10,
	"coap/linkformat":    10,
	"handover":           10,
	"internal/version":   10,
	"internal/natstest":  10,
	"internal/certtest":  10,
	"internal/netnstest": 10,
	"internal/ratelog":   10,
	"internal/tracing":   10,
	"internal/otlptest":  10,
}

// TestLayers fails when a package imports one of its own rank or above
// (other than the package it is part of), or has no rank.
func TestLayers(t *testing.T) {
	const module = "github.com/udpgate/udpgate"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	rel := func(path string) (string, bool) {
		if path == module {
			return "", true
		}
		p, ok := strings.CutPrefix(path, module+"/")
		return p, ok
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	var seen []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		pkg, _ := rel(fields[0])
		seen = append(seen, pkg)
		rank, ok := layers[pkg]
		if !ok {
			t.Errorf("package %q has no rank in layers: give it one, and a line in docs/architecture.md", pkg)
			continue
		}
		for _, imp := range fields[1:] {
			dep, ours := rel(imp)
			if !ours {
				continue
			}
			if r, ok := layers[dep]; ok && r >= rank && !strings.HasPrefix(pkg, dep+"/") {
				t.Errorf("%q (rank %d) imports %q (rank %d): imports go down the layers only", pkg, rank, dep, r)
			}
		}
	}
	for pkg := range layers {
		if !slices.Contains(seen, pkg) {
			t.Errorf("layers ranks %q, which is not a package of the module", pkg)
		}
	}
	// ingress and egress meet only in the gateway.
	for _, pair := range [][2]string{{"ingress", "egress"}, {"egress", "ingress"}} {
		out, err := exec.Command("go", "list", "-deps", module+"/"+pair[0]).Output()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(strings.Fields(string(out)), module+"/"+pair[1]) {
			t.Errorf("%s depends on %s", pair[0], pair[1])
		}
	}
}
