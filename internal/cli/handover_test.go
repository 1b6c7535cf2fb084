//go:build unix

package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/udpgate/udpgate/internal/natstest"
)

// TestGatewayHandover replaces a running `udpgate gateway` with a new one
// under steady load, as an upgrade would: the new process takes the
// sockets over (UDPGATE_HANDOVER), the old one stops and drains, and every
// request sent before, during and after the change is answered exactly
// once. The HTTP endpoint moves to the new process too, and so do the ws
// listeners' TCP sockets, UDPGATE_LISTENERS's and the listener file's:
// a WebSocket client that dials all along is never refused, and a
// connection to the old process is closed with 1001.
func TestGatewayHandover(t *testing.T) {
	ns := natstest.RunServer(t)
	port := freeUDPPort(t)
	wsPort, filePort := freeTCPPort(t), freeTCPPort(t)
	subject := "udpgate.in." + strconv.Itoa(int(port))
	file := filepath.Join(t.TempDir(), "listeners.yaml")
	if err := os.WriteFile(file, fmt.Appendf(nil, "listeners:\n  - {port: %d, address: 127.0.0.1, protocol: ws}\n", filePort), 0o644); err != nil {
		t.Fatal(err)
	}
	authEnv(t, map[string]string{
		"UDPGATE_NATS_URL": ns.ClientURL(), "UDPGATE_NODE": "n1",
		// The ws listener first: its socket is named as it is written.
		"UDPGATE_LISTENERS":       "127.0.0.1:" + strconv.Itoa(int(wsPort)) + "/ws," + "127.0.0.1:" + strconv.Itoa(int(port)) + "/raw",
		"UDPGATE_LISTENERS_FILE":  file,
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
	waitFor(t, "the banner", func() bool { return strings.Contains(old.out.String(), "metrics ") }, old.done, &old.out, &old.err)
	for _, want := range []string{"  tcp 127.0.0.1:" + strconv.Itoa(int(wsPort)) + " ws -> ", "    tcp 127.0.0.1:" + strconv.Itoa(int(filePort)) + " ws -> "} {
		if !strings.Contains(old.out.String(), want) {
			t.Errorf("the banner lacks %q:\n%s", want, old.out.String())
		}
	}

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
	// WebSocket clients dial both ws ports all along; a connection to the
	// old process waits for its close.
	urls := []string{"ws://127.0.0.1:" + strconv.Itoa(int(wsPort)) + "/", "ws://127.0.0.1:" + strconv.Itoa(int(filePort)) + "/"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var closes []chan error
	for _, url := range urls {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		defer c.CloseNow()
		closed := make(chan error, 1)
		go func() {
			_, _, err := c.Read(ctx)
			closed <- err
		}()
		closes = append(closes, closed)
	}
	dialing := make(chan struct{})
	var dialers sync.WaitGroup
	var refused, dialed [2]int
	var dialErrs []error
	for i, url := range urls {
		dialers.Go(func() {
			for {
				select {
				case <-dialing:
					return
				default:
				}
				dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
				c, _, err := websocket.Dial(dctx, url, nil)
				dcancel()
				mu.Lock()
				switch {
				case err == nil:
					dialed[i]++
					c.CloseNow()
				case errors.Is(err, syscall.ECONNREFUSED):
					refused[i]++
				default:
					dialErrs = append(dialErrs, err)
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
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
	close(dialing)
	dialers.Wait()
	for i, closed := range closes {
		if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Errorf("a connection to the old process's %s: %v, want a close with 1001", urls[i], err)
		}
	}
	mu.Lock()
	for i, url := range urls {
		if refused[i] != 0 || dialed[i] == 0 {
			t.Errorf("%s: %d connections refused during the hand-over, %d made", url, refused[i], dialed[i])
		}
	}
	if len(dialErrs) > 0 {
		t.Logf("dials that failed otherwise: %v", dialErrs)
	}
	mu.Unlock()
	// The new process serves the ws ports.
	for _, url := range urls {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			t.Fatalf("dial %s after the hand-over: %v", url, err)
		}
		c.CloseNow()
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
