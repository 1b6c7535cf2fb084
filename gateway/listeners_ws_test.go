package gateway

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
	"github.com/udpgate/udpgate/ws"
)

// heldID is the call id the worker of TestAddRemoveWebSocket holds until
// the test lets it go.
const heldID = 7

// TestAddRemoveWebSocket: a ws listener added while the gateway serves
// answers calls; removed while a call is pending, it refuses new
// connections at once and new calls on the open one, answers the pending
// call, then closes the connection (1001) and its port, which can be
// served again.
func TestAddRemoveWebSocket(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 10 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	release := make(chan struct{})
	places := workers.HandlerFunc(builtin.Places{}.Handle)
	startWorker(t, s, workers.Direct, "places", schemas.RPCSubject("udpgate", port, builtin.PlacesService, builtin.PlacesMethod),
		func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			if r.RPC != nil && r.RPC.ID == heldID {
				<-release
			}
			return places(ctx, w, r)
		})
	srv := &ws.Server{Listener: ln, Path: "/rpc"}
	name, err := g.AddWebSocket(srv, "file")
	if err != nil || name != itoa(int(port))+"/ws" {
		t.Fatalf("AddWebSocket: %q, %v", name, err)
	}
	if _, err := g.AddWebSocket(&ws.Server{Listener: wsListen(t, "127.0.0.1:0"), Port: port}, ""); !errors.Is(err, ErrPortServed) {
		t.Errorf("a second ws listener on the port: %v, want ErrPortServed", err)
	}
	if _, err := g.AddWebSocket(&ws.Server{Listener: wsListen(t, "127.0.0.1:0"), Port: uint16(addrs[0].Port)}, ""); !errors.Is(err, ErrPortServed) {
		t.Errorf("a ws listener on a UDP listener's port: %v, want ErrPortServed", err)
	}
	if got := g.WebSocketsLive(); len(got) != 1 || got[0] != srv {
		t.Errorf("WebSocketsLive %v, want the one added", got)
	}
	st := g.Status(context.Background())
	if i := slices.IndexFunc(st.Listeners, func(l ListenerStatus) bool { return l.Listener == name }); i < 0 || st.Listeners[i].Origin != "file" {
		t.Errorf("status listeners %+v: want %s, origin file", st.Listeners, name)
	}

	url := "ws://" + addr + "/rpc"
	c := dialWS(t, url)
	call := func(id uint64) []byte {
		return envelope(t, id, builtin.PlacesService, builtin.PlacesMethod, &placespb.GetRandomRequest{Limit: 2})
	}
	if r := wsCall(t, c, call(1), false); r.Id != 1 || r.Status != rpcpb.Status_STATUS_OK {
		t.Fatalf("reply %d %v (%s), want 1 OK", r.Id, r.Status, r.Error)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, call(heldID)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the held call pending", func() bool { return g.Stats().Ingress[name].Pending == 1 })
	closed, err := g.RemoveListener(name)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new connections refused", func() bool {
		nc, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	// The open connection stays for the pending call; a new call is
	// refused, once the listener has stopped taking calls.
	waitFor(t, "the listener no longer taking calls", func() bool {
		g.mu.Lock()
		lv := g.lookup(port)
		g.mu.Unlock()
		select {
		case <-lv.in.Drained():
			return true
		default:
			return false
		}
	})
	if err := c.Write(ctx, websocket.MessageBinary, call(8)); err != nil {
		t.Fatal(err)
	}
	if r := wsRead(t, ctx, c, false); r.Id != 8 || r.Status != rpcpb.Status_STATUS_UNAVAILABLE {
		t.Errorf("a call after the removal: %d %v, want 8 UNAVAILABLE", r.Id, r.Status)
	}
	select {
	case <-closed:
		t.Fatal("the listener closed with a call pending")
	default:
	}
	close(release)
	if r := wsRead(t, ctx, c, false); r.Id != heldID || r.Status != rpcpb.Status_STATUS_OK {
		t.Errorf("the pending call: %d %v (%s), want %d OK", r.Id, r.Status, r.Error, heldID)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("after the pending call: %v, want a close with 1001", err)
	}
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("the removed listener's channel still open")
	}
	if st := g.Stats(); hasKey(st.WS, name) || st.ListenersRemoved != 1 || st.ListenersAdded != 1 {
		t.Errorf("after the removal: ws %v, added %d, removed %d", st.WS, st.ListenersAdded, st.ListenersRemoved)
	}
	if got := g.WebSocketsLive(); len(got) != 0 {
		t.Errorf("WebSocketsLive %v after the removal", got)
	}

	// The port is free: served again.
	again, err := g.AddWebSocket(&ws.Server{Listener: wsListen(t, addr), Path: "/rpc"}, "")
	if err != nil || again != name {
		t.Fatalf("the port served again: %q, %v", again, err)
	}
	if r := wsCall(t, dialWS(t, url), call(9), true); r.Id != 9 || r.Status != rpcpb.Status_STATUS_OK {
		t.Errorf("the port served again: %d %v (%s), want 9 OK", r.Id, r.Status, r.Error)
	}
}

// TestAddWebSocketNotServing: a gateway that does not serve takes no ws
// listener, and closes its socket.
func TestAddWebSocketNotServing(t *testing.T) {
	g := &Gateway{}
	ln := wsListen(t, "127.0.0.1:0")
	if _, err := g.AddWebSocket(&ws.Server{Listener: ln}, ""); !errors.Is(err, ErrNotServing) {
		t.Fatalf("AddWebSocket before Serve: %v, want ErrNotServing", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the socket of a refused listener: %v, want it closed", err)
	}
}

// TestStopClosesWebSockets: a gateway that stops stops accepting on its
// ws listeners at once, and closes their connections (1001) once drained.
func TestStopClosesWebSockets(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "ws-node"}
	ln := wsListen(t, "127.0.0.1:0")
	g.WebSockets = []*ws.Server{{Listener: ln}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})
	select {
	case <-g.Ready():
	case err := <-served:
		t.Fatalf("Serve: %v", err)
	}
	c := dialWS(t, "ws://"+ln.Addr().String()+"/")
	// Once the server has taken the connection over from its HTTP server
	// (which closes a connection not taken over yet without a close
	// frame).
	name := schemas.Listener(uint16(ln.Addr().(*net.TCPAddr).Port), schemas.ProtocolWS)
	waitFor(t, "the connection accepted", func() bool { return g.Stats().WS[name].Accepted == 1 })
	cancel()
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if _, _, err := c.Read(rctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("a connection of a stopped gateway: %v, want a close with 1001", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	served <- nil // for the cleanup
	if nc, err := net.DialTimeout("tcp4", ln.Addr().String(), time.Second); err == nil {
		nc.Close()
		t.Error("the ws port still takes connections after Serve returned")
	}
}

func wsListen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}
