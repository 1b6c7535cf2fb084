package node

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// TestNodeObserveTime: the built-in coap worker's GET /time is
// observable, and notified every second; UDPGATE_COAP_OBSERVE_CON_EVERY
// reaches the listener (1: every notification is a CON).
func TestNodeObserveTime(t *testing.T) {
	cfg := nodeConfig(t, map[string]string{"COAP_OBSERVE_CON_EVERY": "1"})
	ls, err := config.ParseListeners("127.0.0.1:1/coap")
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, discard, Options{Listeners: ls, Workers: []Worker{{Name: "coap", Listener: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	co, err := coapudp.Dial(n.Ports[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	got := make(chan string, 16)
	octx, ocancel := context.WithTimeout(ctx, 20*time.Second)
	defer ocancel()
	if _, err := co.Observe(octx, "/time", func(req *pool.Message) {
		body, _ := req.ReadBody()
		got <- string(body)
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // the registration's response, then two notifications
		select {
		case v := <-got:
			if _, err := time.Parse(time.RFC3339, v); err != nil {
				t.Fatalf("payload %d: %q", i, v)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d payloads, want 3", i)
		}
	}
	st := n.Gateway.Stats().CoAP[schemas.Listener(n.Ports[0].Port(), schemas.ProtocolCoAP)].Observe
	if st.Registrations != 1 || st.CON < 2 || st.NON != 0 {
		t.Errorf("stats %+v", st)
	}
}
