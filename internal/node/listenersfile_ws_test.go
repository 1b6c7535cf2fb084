package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/certtest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// freeTCPPort returns a TCP port free on 127.0.0.1 now.
func freeTCPPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// places serves GetRandom on the subjects of the ws or rpc listener on
// port, with the built-in places worker, until the test ends.
func (n *fileNode) places(t *testing.T, port uint16) {
	t.Helper()
	w := NewWorker(n.cfg, discard, n.JetStream, fmt.Sprintf("places-%d", port),
		builtin.Subjects("places", n.cfg.Prefix, port), workers.HandlerFunc(builtin.Places{}.Handle), 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	if err := WaitReady(ctx, w.Ready()); err != nil {
		t.Fatal(err)
	}
}

// dialWS dials url with the client hc (nil: the default one).
func dialWS(t *testing.T, url string, hc *http.Client) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// getRandom calls GetRandom on c and returns the reply's status.
func getRandom(t *testing.T, c *websocket.Conn, id uint64) rpcpb.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	params, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: 1})
	b, _ := proto.Marshal(&rpcpb.Call{Id: id, Service: builtin.PlacesService, Method: builtin.PlacesMethod, Params: params})
	if err := c.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatalf("write: %v", err)
	}
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(b, &r); err != nil || r.Id != id {
		t.Fatalf("reply %v, %v; want id %d", &r, err, id)
	}
	return r.Status
}

// TestListenersFileWebSocket: a ws listener of the file is served as one
// of UDPGATE_LISTENERS is, with its path, connection rate and the limits
// of the UDPGATE_WS_ variables; changed, it is made again with the new
// options (its connections closed with 1001); removed, its port refuses
// connections.
func TestListenersFileWebSocket(t *testing.T) {
	port := freeTCPPort(t)
	entry := func(connRate int) string {
		return fmt.Sprintf("listeners:\n  - {port: %d, address: 127.0.0.1, protocol: ws, path: /rpc, conn_rate: %d, rate: 1000}\n", port, connRate)
	}
	n := startFileNode(t, entry(50), map[string]string{"WS_MAX_CONNECTIONS": "7"})
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	n.places(t, port)
	url := fmt.Sprintf("ws://127.0.0.1:%d/rpc", port)
	c := dialWS(t, url, nil)
	if st := getRandom(t, c, 1); st != rpcpb.Status_STATUS_OK {
		t.Fatalf("GetRandom on the file's ws listener: %v", st)
	}
	live := n.Gateway.WebSocketsLive()
	if len(live) != 1 || live[0].ConnRate != 50 || live[0].Path != "/rpc" || live[0].MaxConnections != 7 || live[0].Guard == nil {
		t.Fatalf("the file's ws listener %+v", live)
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	if ls := n.Gateway.Status(n.Context()).Listeners; !slices.ContainsFunc(ls, func(l gateway.ListenerStatus) bool { return l.Listener == name && l.Origin == OriginFile }) {
		t.Errorf("status listeners %+v: want %s from the file", ls, name)
	}
	if ls := f.Listeners(); len(ls) != 1 || ls[0].String() != fmt.Sprintf("127.0.0.1:%d/ws", port) {
		t.Errorf("the file's listeners %v", ls)
	}

	// The client reads, so that it answers the close at once.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		closed <- err
	}()
	writeFile(t, n.path, entry(60))
	trigger <- struct{}{}
	waitUntil(t, "the change applied", func() bool { return f.Stats().Applied == 2 })
	if err := <-closed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("a connection of the changed listener: %v, want a close with 1001", err)
	}
	if live := n.Gateway.WebSocketsLive(); len(live) != 1 || live[0].ConnRate != 60 {
		t.Fatalf("the changed ws listener %+v", live)
	}
	c = dialWS(t, url, nil)
	if st := getRandom(t, c, 2); st != rpcpb.Status_STATUS_OK {
		t.Fatalf("GetRandom on the changed ws listener: %v", st)
	}
	c.Close(websocket.StatusNormalClosure, "")

	writeFile(t, n.path, "listeners: []\n")
	trigger <- struct{}{}
	waitUntil(t, "the removal applied", func() bool { return f.Stats().Applied == 3 })
	waitUntil(t, "the ws listener gone", func() bool { return len(n.Gateway.WebSocketsLive()) == 0 })
	if c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Error("the removed ws listener's port takes connections")
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 2 || st.ListenersRemoved != 2 {
		t.Errorf("gateway: added %d, removed %d; want 2 and 2", st.ListenersAdded, st.ListenersRemoved)
	}
}

// TestListenersFileWSS: a wss listener of the file serves TLS with the
// certificate of UDPGATE_WSS_CERT_FILE; without the certificate files,
// the reading is refused.
func TestListenersFileWSS(t *testing.T) {
	port := freeTCPPort(t)
	file := fmt.Sprintf("listeners:\n  - {port: %d, address: 127.0.0.1, protocol: wss}\n", port)

	t.Run("no certificate", func(t *testing.T) {
		n := startFileNode(t, "listeners: []\n", nil)
		f := n.watch(t, make(chan struct{}), time.Hour)
		writeFile(t, n.path, file)
		err := f.Load(n.Context())
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("listener 127.0.0.1:%d/wss: a wss listener needs a certificate", port)) {
			t.Errorf("error %v, want the certificate missing", err)
		}
		if len(n.Gateway.WebSocketsLive()) != 0 {
			t.Error("a wss listener served without a certificate")
		}
	})

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert := certtest.WriteSelfSigned(t, certFile, keyFile, "file")
	n := startFileNode(t, file, map[string]string{"WSS_CERT_FILE": certFile, "WSS_KEY_FILE": keyFile})
	n.watch(t, make(chan struct{}), time.Hour)
	n.places(t, port)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c := dialWS(t, fmt.Sprintf("wss://127.0.0.1:%d/", port), hc)
	if st := getRandom(t, c, 1); st != rpcpb.Status_STATUS_OK {
		t.Fatalf("GetRandom on the file's wss listener: %v", st)
	}
	name := schemas.Listener(port, schemas.ProtocolWS)
	if st := n.Gateway.Stats(); st.WS[name].Accepted != 1 {
		t.Errorf("ws stats of %s: %+v", name, st.WS[name])
	}
}
