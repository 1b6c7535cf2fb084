package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/certtest"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// TestNodeWSS: a wss listener serves calls over TLS with the certificate
// of its files, serves a renewed one once the files change, and keeps the
// old one while the files do not load.
func TestNodeWSS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := certtest.WriteSelfSigned(t, certFile, keyFile, "first")
	cfg := nodeConfig(t, map[string]string{"WSS_CERT_FILE": certFile, "WSS_KEY_FILE": keyFile})
	ls, err := config.ParseListeners("127.0.0.1:1/wss;path=/rpc")
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, discard, Options{Listeners: ls, Workers: []Worker{{Name: "places", Listener: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ws := n.Gateway.WebSockets[0]
	ws.Certificates.CheckEvery = -1 // look at every handshake

	// call dials with a client that trusts only want, and calls
	// GetRandom.
	call := func(want *x509.Certificate) error {
		pool := x509.NewCertPool()
		pool.AddCert(want)
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		c, _, err := websocket.Dial(dctx, "wss://"+n.Ports[0].String()+"/rpc", &websocket.DialOptions{HTTPClient: hc})
		if err != nil {
			return err
		}
		defer c.CloseNow()
		params, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: 1})
		b, _ := proto.Marshal(&rpcpb.Call{Id: 1, Service: "InterestingPlaces", Method: "GetRandom", Params: params})
		if err := c.Write(dctx, websocket.MessageBinary, b); err != nil {
			return err
		}
		_, b, err = c.Read(dctx)
		if err != nil {
			return err
		}
		var r rpcpb.Reply
		if err := proto.Unmarshal(b, &r); err != nil || r.Status != rpcpb.Status_STATUS_OK {
			t.Fatalf("reply %v, %v", &r, err)
		}
		return nil
	}
	if err := call(first); err != nil {
		t.Fatalf("with the first certificate: %v", err)
	}
	second := certtest.WriteSelfSigned(t, certFile, keyFile, "second")
	if err := call(second); err != nil {
		t.Fatalf("after the files changed: %v", err)
	}
	if err := call(first); err == nil {
		t.Fatal("the first certificate is still served")
	}
	// A renewal that does not load keeps the second certificate.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := call(second); err != nil {
		t.Fatalf("after a bad renewal: %v", err)
	}
	name := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolWS)
	st := n.Gateway.Stats().WS[name]
	if st.CertReloads != 1 || st.CertReloadFailed < 1 {
		t.Errorf("reloads %d, failed %d", st.CertReloads, st.CertReloadFailed)
	}
}

// TestNodeWSSBadCertificate: a certificate that does not load stops the
// node from starting, with an error naming the file.
func TestNodeWSSBadCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, []byte("junk"), 0o644)
	os.WriteFile(keyFile, []byte("junk"), 0o600)
	cfg := nodeConfig(t, map[string]string{"WSS_CERT_FILE": certFile, "WSS_KEY_FILE": keyFile})
	ls, _ := config.ParseListeners("127.0.0.1:1/wss")
	ls[0].Addr = netip.AddrPortFrom(ls[0].Addr.Addr(), 0)
	n, err := Start(context.Background(), cfg, discard, Options{Listeners: ls})
	if err == nil {
		n.Close()
		t.Fatal("started")
	}
	if want := certFile; !strings.Contains(err.Error(), want) {
		t.Errorf("error %v does not name %s", err, want)
	}
}
