package node

import (
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpgate/udpgate/bridge"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// TestStartBridge: a node with UDPGATE_BRIDGE_* set leases a port over
// its HTTP endpoint and over NATS, serves the bridge's metrics, and
// stops with its bindings.
func TestStartBridge(t *testing.T) {
	low := 20000 + rand.IntN(30000)
	cfg := nodeConfig(t, map[string]string{
		"BRIDGE_PORTS":        strconv.Itoa(low) + "-" + strconv.Itoa(low+99),
		"BRIDGE_TOKEN":        "node-test-token",
		"BRIDGE_MAX_BINDINGS": "4",
	})
	cfg.HTTPListen = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, discard, Options{
		Listeners: []config.Listener{{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: schemas.ProtocolRaw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := StartBridge(n.Running, cfg, discard); err != nil {
		t.Fatal(err)
	}

	var in bridge.Info
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("POST", n.MetricsURL+"/v1/udp/bind", strings.NewReader(`{"addr":"127.0.0.1"}`))
		req.Header.Set("Authorization", "Bearer node-test-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(body, &in); err != nil {
				t.Fatal(err)
			}
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) { // 503: Serve has not begun
			t.Fatalf("bind: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p := netip.MustParseAddrPort(in.LocalAddr).Port()
	if int(p) < low || int(p) > low+99 || in.Node != cfg.Node {
		t.Fatalf("bound %+v, want a port of %d-%d on %s", in, low, low+99, cfg.Node)
	}

	m, err := n.Conn.Request(bridge.Subject(cfg.Prefix, cfg.Node, bridge.OpStatus), nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st bridge.Status
	if err := json.Unmarshal(m.Data, &st); err != nil || len(st.Bindings) != 1 || st.Bindings[0].ID != in.ID {
		t.Fatalf("NATS status %s (%v)", m.Data, err)
	}

	resp, err := http.Get(n.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`udpgate_bridge_bindings{kind="http"} 1`, `udpgate_bridge_bindings_max 4`} {
		if !strings.Contains(string(metrics), want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	n.Stop()
	if err := n.Wait(); err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(p)})
	if err != nil {
		t.Fatalf("the leased port is not free once the node stopped: %v", err)
	}
	c.Close()
}
