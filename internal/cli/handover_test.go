//go:build unix

package cli

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/natstest"
)

// TestGatewayHandover replaces a running `udpgate gateway` with a new one
// under steady load, as an upgrade would: the new process takes the
// sockets over (UDPGATE_HANDOVER), the old one stops and drains, and every
// request sent before, during and after the change is answered exactly
// once. The HTTP endpoint moves to the new process too.
func TestGatewayHandover(t *testing.T) {
	ns := natstest.RunServer(t)
	port := freeUDPPort(t)
	subject := "udpgate.in." + strconv.Itoa(int(port))
	authEnv(t, map[string]string{
		"UDPGATE_NATS_URL": ns.ClientURL(), "UDPGATE_NODE": "n1",
		"UDPGATE_LISTENERS":       "127.0.0.1:" + strconv.Itoa(int(port)) + "/raw",
		"UDPGATE_WORKER_SUBJECTS": subject,
		"UDPGATE_HTTP_LISTEN":     "127.0.0.1:0", // the worker's; the gateways' below
		"UDPGATE_HANDOVER":        filepath.Join(t.TempDir(), "handover.sock"),
		"UDPGATE_STREAM_STORAGE":  "memory",
		// See TestNATSTLSAndPassword.
		"UDPGATE_DISCOVERY_SUBSCRIPTIONS": "off",
	})
	start(t, "worker: serving", "worker", "echo")
	t.Setenv("UDPGATE_HTTP_LISTEN", "127.0.0.1:"+strconv.Itoa(int(freeTCPPort(t))))
	old := start(t, "udpgate gateway:", "gateway")

	// A client sends a numbered request every millisecond, from one
	// socket, and counts the replies by number.
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 1500
	var mu sync.Mutex
	replies := map[string]int{}
	var reading sync.WaitGroup
	reading.Go(func() {
		buf := make([]byte, 64)
		for {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			k, err := c.Read(buf)
			if err != nil {
				return // quiet for 3 s: the test is over
			}
			mu.Lock()
			replies[string(buf[:k])]++
			mu.Unlock()
		}
	})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := range n {
			<-tick.C
			c.Write([]byte("req-" + strconv.Itoa(i)))
		}
	}()
	time.Sleep(400 * time.Millisecond)
	replacement := start(t, "udpgate gateway:", "gateway")
	select {
	case err := <-old.done:
		if err != nil {
			t.Errorf("the old gateway: %v", err)
		}
		old.done <- err // for its cleanup
	case <-time.After(20 * time.Second):
		t.Fatal("the old gateway did not stop after the hand-over")
	}
	<-sent
	reading.Wait()

	mu.Lock()
	defer mu.Unlock()
	lost, twice := 0, 0
	for i := range n {
		switch replies["req-"+strconv.Itoa(i)] {
		case 0:
			lost++
		case 1:
		default:
			twice++
		}
	}
	if lost != 0 || twice != 0 {
		t.Errorf("%d of %d requests unanswered, %d answered twice", lost, n, twice)
	}
	for _, want := range []string{"took the sockets over from the running gateway", "a new process took the sockets over: stopping"} {
		if !strings.Contains(replacement.err.String()+old.err.String(), want) {
			t.Errorf("the logs do not say %q:\n%s\n%s", want, old.err.String(), replacement.err.String())
		}
	}
}
