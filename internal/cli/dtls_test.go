package cli

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
)

// TestBannerDTLS: the banner names coaps and dtls listeners as
// UDPGATE_LISTENERS writes them, and suggests send with a pre-shared key
// for the coap worker on a coaps listener (none for raw over DTLS).
func TestBannerDTLS(t *testing.T) {
	ls, err := config.ParseListeners("5684/coaps,9443/dtls")
	if err != nil {
		t.Fatal(err)
	}
	if p0, p1 := protocol(ls[0]), protocol(ls[1]); p0 != "coaps" || p1 != "dtls" {
		t.Errorf("protocols %s, %s", p0, p1)
	}
	hints := tryHints(ls, []node.Worker{{Name: "coap", Listener: 0}, {Name: "echo", Listener: 1}})
	if want := []string{"go run . send --psk-identity IDENTITY --psk KEY coaps://127.0.0.1:5684/time"}; !slices.Equal(hints, want) {
		t.Errorf("hints %q, want %q", hints, want)
	}
}

// TestSendPSKFlags: send refuses a pre-shared key it could not use.
func TestSendPSKFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--psk-identity", "a b", "--psk", "k"},
		{"--psk-identity", "a:b", "--psk", "k"},
		{"--psk-identity", "alice", "--psk", "0xzz"},
		{"--psk-identity", "alice"},
	} {
		var out, errb bytes.Buffer
		err := Run(context.Background(), append(append([]string{"send"}, args...), "coaps://127.0.0.1:1/x"), &out, &errb)
		if !errors.Is(err, errUsage) {
			t.Errorf("send %q: %v, want a usage error", args, err)
		}
	}
}
