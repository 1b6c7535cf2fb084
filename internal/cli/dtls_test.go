package cli

import (
	"slices"
	"testing"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
)

// TestBannerDTLS: the banner names coaps and dtls listeners as
// UDPGATE_LISTENERS writes them, and suggests libcoap's client for the
// coap worker on a coaps listener (udpgate send speaks no DTLS).
func TestBannerDTLS(t *testing.T) {
	ls, err := config.ParseListeners("5684/coaps,9443/dtls")
	if err != nil {
		t.Fatal(err)
	}
	if p0, p1 := protocol(ls[0]), protocol(ls[1]); p0 != "coaps" || p1 != "dtls" {
		t.Errorf("protocols %s, %s", p0, p1)
	}
	hints := tryHints(ls, []node.Worker{{Name: "coap", Listener: 0}, {Name: "echo", Listener: 1}})
	if want := []string{"coap-client-openssl -m get -u IDENTITY -k KEY coaps://127.0.0.1:5684/time"}; !slices.Equal(hints, want) {
		t.Errorf("hints %q, want %q", hints, want)
	}
}
