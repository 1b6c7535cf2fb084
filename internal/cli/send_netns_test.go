package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/netnstest"
	"github.com/udpgate/udpgate/internal/node"
)

// netnsEchoNode starts a node in namespace ns whose first listener,
// 0.0.0.0:9000/raw, is served by the built-in echo worker, and whose
// coap listener, if coap is not empty, by the built-in coap worker.
func netnsEchoNode(t *testing.T, ns, coap string) {
	t.Helper()
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ls, err := config.ParseListeners("0.0.0.0:9000/raw")
	if err != nil {
		t.Fatal(err)
	}
	ws := []node.Worker{{Name: "echo", Listener: 0}}
	if coap != "" {
		cl, err := config.ParseListeners(coap)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, cl...)
		ws = append(ws, node.Worker{Name: "coap", Listener: 1})
	}
	var n *node.Node
	if err := netnstest.Do(ns, func() error {
		n, err = node.Start(ctx, cfg.ForGateway(), slog.New(slog.DiscardHandler), node.Options{Listeners: ls, Workers: ws})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
}

// TestSendBroadcastAndMTU: `udpgate send --broadcast` to the link's
// broadcast address prints the replies of both nodes that heard it, the
// gateway's and the one beside the client, each from its own address;
// `udpgate send --mtu` on a link of MTU 1280 sends what fits, and for a
// request that does not, says the path MTU and exits 1.
func TestSendBroadcastAndMTU(t *testing.T) {
	p := netnstest.New(t, netnstest.Options{MTU: 1280})
	defaults(t)
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_HTTP_LISTEN", "")
	t.Setenv("UDPGATE_COAP_LEISURE", "100ms")
	netnsEchoNode(t, p.Gateway.Namespace, "5683/coap;group=224.0.1.187%"+p.Gateway.Name)
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	netnsEchoNode(t, p.Client.Namespace, "")
	send := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		var err error
		if derr := netnstest.Do(p.Client.Namespace, func() error {
			err = Run(context.Background(), append([]string{"send"}, args...), &out, &errb)
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return out.String(), errb.String(), err
	}

	out, errb, err := send("--broadcast", "--timeout", "2s", "udp://"+p.Broadcast.String()+":9000", "who is there")
	if err != nil {
		t.Fatalf("--broadcast: %v (%s)", err, errb)
	}
	for _, from := range []netip.Addr{p.Gateway.IP4, p.Client.IP4} {
		if want := "12 bytes from " + from.String() + ":9000: time="; !strings.Contains(out, want) {
			t.Errorf("--broadcast printed %q, want a line with %q", out, want)
		}
	}
	if !strings.Contains(errb, "2 replies within 2s") || strings.Count(out, "who is there\n") != 2 {
		t.Errorf("--broadcast: stdout %q, stderr %q", out, errb)
	}
	if _, _, err := send("--broadcast", "--count", "2", "udp://"+p.Broadcast.String()+":9000", "x"); exitCode(err) != 2 {
		t.Errorf("--broadcast --count 2: %v, want a usage error", err)
	}
	// A NON GET to the All-CoAP-Nodes group: the gateway's coap listener
	// joined it and answers; the 4.04 for a resource nobody serves is not
	// sent.
	out, errb, err = send("--broadcast", "--timeout", "2s", "coap://224.0.1.187/hello")
	if err != nil || !strings.Contains(out, " bytes from 10.77.0.1:5683: time=") || !strings.Contains(out, " code=2.05: Hello from udpgate") {
		t.Errorf("--broadcast coap://: %v, stdout %q, stderr %q", err, out, errb)
	}
	if out, errb, err = send("--broadcast", "--timeout", "1s", "coap://224.0.1.187/nothing"); exitCode(err) != 1 || out != "" || !strings.Contains(errb, "0 replies") {
		t.Errorf("--broadcast coap:// to nothing: %v, stdout %q, stderr %q", err, out, errb)
	}

	to := "udp://" + p.Gateway.IP4.String() + ":9000"
	fits := strings.Repeat("f", 1200)
	out, errb, err = send("--mtu", "-v", to, fits)
	if err != nil || out != fits+"\n" || !strings.Contains(errb, "path MTU to 10.77.0.1:9000: 1280") {
		t.Errorf("--mtu, 1200 bytes: %v, stdout %d bytes, stderr %q", err, len(out), errb)
	}
	_, _, err = send("--mtu", to, strings.Repeat("b", 1400))
	if exitCode(err) != 1 || err == nil || !strings.Contains(err.Error(), "larger than the path MTU (path MTU 1280)") {
		t.Errorf("--mtu, 1400 bytes: %v, want the path MTU and exit 1", err)
	}
	// Without --mtu the same request goes in fragments and is answered.
	if out, _, err := send(to, strings.Repeat("b", 1400)); err != nil || len(out) != 1401 {
		t.Errorf("1400 bytes without --mtu: %v, %d bytes", err, len(out))
	}
}
