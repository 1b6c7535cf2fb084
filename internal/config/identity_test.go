package config

import (
	"slices"
	"strings"
	"testing"
)

// TestIdentityOption: identity= lists the peers a coaps or dtls listener
// serves, in UDPGATE_LISTENERS and in the listener file alike; other
// listeners refuse it, and every bad entry is named.
func TestIdentityOption(t *testing.T) {
	ls, err := ParseListeners("5684/coaps;identity=alice CN=device-12,9001/dtls,5683/coap")
	if err != nil {
		t.Fatal(err)
	}
	if got := ls[0].Identities(); !slices.Equal(got, []string{"alice", "CN=device-12"}) {
		t.Errorf("coaps identities %q", got)
	}
	if got := ls[1].Identities(); got != nil {
		t.Errorf("dtls without identity=: %q, want nil (every peer that authenticates)", got)
	}
	_, err = ParseListeners("9000/raw;identity=alice,5685/coaps;identity= ,8080/ws;identity=alice")
	for _, want := range []string{
		`"9000/raw;identity=alice": identity= is for coaps and dtls listeners`,
		`"5685/coaps;identity=": option identity=: want one or more identities`,
		`"8080/ws;identity=alice": identity= is for UDP listeners`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to name %s", err, want)
		}
	}

	// A subject with commas, which UDPGATE_LISTENERS cannot hold, goes in
	// the file.
	fls, err := ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 5684, protocol: coaps, identity: [alice, \"CN=device-12,O=Acme\"]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := fls[0].Identities(); !slices.Equal(got, []string{"alice", "CN=device-12,O=Acme"}) {
		t.Errorf("file identities %q", got)
	}
	_, err = ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 5683, protocol: coap, identity: alice}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "l.yaml:2") || !strings.Contains(err.Error(), "identity is for coaps and dtls listeners") {
		t.Errorf("a coap listener with identity in the file: %v", err)
	}
}
