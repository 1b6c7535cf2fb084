package gateway

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/natstest"
)

// TestNodeNotifier runs workers/examples/node/notifier.mjs, an
// observable resource written from schemas/README.md alone: go-coap's
// Observe registers on GET /counter and gets the counter the script
// publishes to its notify subject, increasing.
func TestNodeNotifier(t *testing.T) {
	dir, node := nodeWorkerDeps(t)
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	observeNode(t, s, c, "node-notifier", coap.Config{})
	w := startNodeWorker(t, node, dir, "notifier.mjs", []string{
		"NATS_URL=" + s.ClientURL(), "COAP_PORT=" + strconv.Itoa(port), "INTERVAL=100",
	})
	select {
	case <-w.ready:
	case <-time.After(30 * time.Second):
		t.Fatal("notifier.mjs did not say ready")
	}
	co := dialCoAP(t, c.LocalAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan int, 64)
	obs, err := co.Observe(ctx, "/counter", func(m *pool.Message) {
		body, _ := m.ReadBody()
		n, err := strconv.Atoi(string(body))
		if err != nil {
			n = -1
		}
		select {
		case got <- n:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Cancel(context.Background())
	last := -1
	for i := range 4 { // the registration's response, then 3 notifications
		select {
		case n := <-got:
			if n < 0 || n <= last && i > 0 {
				t.Fatalf("value %d after %d: want a counter that goes up", n, last)
			}
			last = n
		case <-time.After(10 * time.Second):
			t.Fatalf("%d values, then none for 10s", i)
		}
	}
}
