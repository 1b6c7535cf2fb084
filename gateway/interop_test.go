package gateway

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"
)

// lossyProxy relays datagrams between one client and upstream, dropping
// the first drop datagrams that come back from upstream, as a network that
// loses the gateway's answer would. It returns its address.
func lossyProxy(t *testing.T, upstream string, drop int) (addr string, dropped func() int) {
	t.Helper()
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ua, _ := net.ResolveUDPAddr("udp", upstream)
	back, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex // guards client and n
		client *net.UDPAddr
		n      int
	)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			k, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			client = from
			mu.Unlock()
			back.Write(buf[:k])
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			k, err := back.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			n++
			lose, to := n <= drop, client
			mu.Unlock()
			if !lose && to != nil {
				front.WriteToUDP(buf[:k], to)
			}
		}
	})
	t.Cleanup(func() {
		front.Close()
		back.Close()
		wg.Wait()
	})
	return front.LocalAddr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return min(n, drop)
	}
}

// coapClient returns the path of libcoap's coap-client. CI installs it
// (.ci/run: libcoap3-bin); elsewhere the test says how.
func coapClient(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"coap-client-notls", "coap-client"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("coap-client missing in CI: .ci/run installs libcoap3-bin")
	}
	t.Skip("needs libcoap's coap-client: apt-get install libcoap3-bin")
	return ""
}

// libcoap runs coap-client with args and returns what it wrote to -o.
func libcoap(t *testing.T, args ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, coapClient(t), append([]string{"-B", "20", "-o", out}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("coap-client %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("coap-client %s wrote nothing: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return b
}

func TestCoAPLibcoapClient(t *testing.T) {
	coapClient(t)
	g := &Gateway{CoAP: coapConfig(300 * time.Millisecond)}
	addr, _, seen := coapGateway(t, g, 700*time.Millisecond)
	url := "coap://" + addr

	t.Run("GET /time", func(t *testing.T) {
		if got := libcoap(t, url+"/time"); string(got) != "2026-11-23T00:00:00Z" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("POST /echo 5 KB, block-wise both ways", func(t *testing.T) {
		payload := bytes.Repeat([]byte("udpgate-"), 640) // 5120 bytes
		in := filepath.Join(t.TempDir(), "in")
		os.WriteFile(in, payload, 0o600)
		before := g.Stats().CoAP
		got := libcoap(t, "-m", "post", "-b", "1024", "-t", "42", "-f", in, url+"/echo")
		if !bytes.Equal(got, payload) {
			t.Errorf("got %d bytes back, want the 5120 sent", len(got))
		}
		for k, c := range g.Stats().CoAP {
			if c.BlockContinue-before[k].BlockContinue < 4 || c.BlocksServed-before[k].BlocksServed < 4 {
				t.Errorf("block-wise not used both ways: %+v", c)
			}
		}
	})
	t.Run("NON", func(t *testing.T) {
		if got := libcoap(t, "-N", url+"/time"); string(got) != "2026-11-23T00:00:00Z" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("slow worker: separate response, acknowledged", func(t *testing.T) {
		before := g.Stats().CoAP
		if got := libcoap(t, url+"/slow"); string(got) != "slow answer" {
			t.Errorf("got %q", got)
		}
		waitFor(t, "the separate response acknowledged", func() bool {
			for k, c := range g.Stats().CoAP {
				if c.Separate-before[k].Separate == 1 && c.Retransmissions == before[k].Retransmissions {
					return true
				}
			}
			return false
		})
	})
	t.Run("retransmitted CON answered once from cache", func(t *testing.T) {
		proxy, dropped := lossyProxy(t, addr, 1)
		before, dups := seen.Load(), g.Stats().CoAP
		if got := libcoap(t, "coap://"+proxy+"/time"); string(got) != "2026-11-23T00:00:00Z" {
			t.Errorf("got %q", got)
		}
		if dropped() != 1 {
			t.Fatal("the proxy dropped nothing")
		}
		if n := seen.Load() - before; n != 1 {
			t.Errorf("the worker saw the request %d times, want 1", n)
		}
		for k, c := range g.Stats().CoAP {
			if c.Duplicates-dups[k].Duplicates != 1 {
				t.Errorf("duplicates %d, want 1", c.Duplicates-dups[k].Duplicates)
			}
		}
	})
}

func TestCoAPGoCoAPRetransmission(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(300 * time.Millisecond)}
	addr, _, seen := coapGateway(t, g, 0)
	proxy, dropped := lossyProxy(t, addr, 1)
	co := dialCoAP(t, proxy)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := co.Get(ctx, "/time")
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := resp.ReadBody(); resp.Code() != codes.Content || string(body) != "2026-11-23T00:00:00Z" {
		t.Errorf("%v %q", resp.Code(), body)
	}
	if dropped() != 1 {
		t.Fatal("the proxy dropped nothing")
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the worker saw the request %d times, want 1", n)
	}
}
