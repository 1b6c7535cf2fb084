package node

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestNodePush: a raw listener written 9000/raw;push=on;reply=off in
// UDPGATE_LISTENERS takes workers' pushes to a client that sent to it,
// from the address it sent to, with the UDPGATE_PUSH_* limits: a second
// push within the rate of 1 per second (bursts of 2) beyond the burst is
// refused.
func TestNodePush(t *testing.T) {
	cfg := nodeConfig(t, map[string]string{"PUSH_RATE": "1"})
	ls, err := config.ParseListeners("127.0.0.1:1/raw;push=on;reply=off")
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0) // any free port
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, discard, Options{Listeners: ls})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := n.Ports[0]
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), to); err != nil {
		t.Fatal(err)
	}
	name := schemas.Listener(to.Port(), schemas.ProtocolRaw)
	for deadline := time.Now().Add(10 * time.Second); n.Gateway.Stats().Ingress[name].Received == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the datagram was not read")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dest := c.LocalAddr().(*net.UDPAddr).AddrPort()
	push := func() error {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		defer pcancel()
		return workers.SendDatagram(pctx, n.Conn, cfg.Prefix, cfg.Node, to.Port(), dest, []byte("pushed"))
	}
	var refused *workers.OutError
	sent := 0
	for range 5 {
		err := push()
		if errors.As(err, &refused) && refused.Reason == schemas.OutErrRate {
			break
		}
		if err != nil {
			t.Fatalf("push: %v", err)
		}
		sent++
	}
	if refused == nil || sent < 2 {
		t.Fatalf("%d pushes sent before one was refused for the rate (%v)", sent, refused)
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:m]) != "pushed" || from != to {
		t.Errorf("got %q from %v (%v), want %q from %v", buf[:m], from, err, "pushed", to)
	}
}
