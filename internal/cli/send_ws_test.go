package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/udpgate/udpgate/internal/certtest"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas/placespb"
)

// wsNode starts a node (embedded NATS, the gateway, the built-in places
// worker) whose one listener is a ws listener on path, until the test
// ends, and returns its address. With certFile and keyFile, it is a wss
// listener.
func wsNode(t *testing.T, path, certFile, keyFile string) netip.AddrPort {
	t.Helper()
	defaults(t)
	if certFile != "" {
		t.Setenv("UDPGATE_WSS_CERT_FILE", certFile)
		t.Setenv("UDPGATE_WSS_KEY_FILE", keyFile)
	}
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_HTTP_LISTEN", "")
	t.Setenv("UDPGATE_RATE", "0") // the guard's per-source limit is not under test
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ls := []config.Listener{{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: "ws", Path: path, TLS: certFile != ""}}
	n, err := node.Start(ctx, cfg.ForGateway(), slog.New(slog.DiscardHandler), node.Options{Listeners: ls, Workers: []node.Worker{{Name: "places", Listener: 0}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n.Ports[0]
}

// TestSendWS sends GetRandom to a ws listener served by the built-in
// places worker, in binary and text messages, once and with --count,
// and checks what a wrong path, a closed port and a bad URL say.
func TestSendWS(t *testing.T) {
	addr := wsNode(t, "/rpc", "", "")
	url := "ws://" + addr.String() + "/rpc/InterestingPlaces/GetRandom"
	send := func(args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		err := Run(context.Background(), append([]string{"send"}, args...), &out, &errb)
		return out.String(), errb.String(), err
	}
	for _, flags := range [][]string{nil, {"--text"}, {"-v"}} {
		out, errb, err := send(append(flags, url, `{"limit": 2}`)...)
		if err != nil {
			t.Fatalf("send %v: %v (%s)", flags, err, errb)
		}
		var got placespb.GetRandomResponse
		if err := protojson.Unmarshal([]byte(out), &got); err != nil || len(got.Places) != 2 || got.Places[0].Name == "" {
			t.Errorf("send %v printed %q (%v), want two places as JSON", flags, out, err)
		}
		if len(flags) > 0 && flags[0] == "-v" && !strings.HasPrefix(errb, "reply from "+addr.String()+" in ") {
			t.Errorf("send -v said %q", errb)
		}
	}
	out, _, err := send(url, `{"limit": 0}`)
	if exitCode(err) != 1 || !strings.HasPrefix(err.Error(), "rpc: STATUS_INVALID_ARGUMENT: limit 0 is outside") || out != "" {
		t.Errorf("limit 0: %v, exit %d, stdout %q", err, exitCode(err), out)
	}
	out, errb, err := send("--count", "3", url, `{"limit": 1}`)
	if err != nil || strings.Count(out, " bytes from "+addr.String()+": seq=") != 3 || !strings.Contains(out, "3 sent, 3 received, 0% loss") {
		t.Errorf("--count 3: %v\n%s%s", err, out, errb)
	}

	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, tt := range []struct {
		url, want string
		exit      int
	}{
		{"ws://" + addr.String() + "/InterestingPlaces/GetRandom", "send: client: ws://" + addr.String() + "/: upgrade refused: HTTP 404 Not Found (404 page not found)", 1},
		{"ws://" + closed + "/InterestingPlaces/GetRandom", "connect: connection refused", 1},
		{"ws://" + addr.String() + "/GetRandom", "want ws://HOST:PORT[/PATH]/SERVICE/METHOD", 2},
	} {
		_, _, err := send(tt.url, `{"limit": 1}`)
		if exitCode(err) != tt.exit || err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("send %s: %v (exit %d), want %q (exit %d)", tt.url, err, exitCode(err), tt.want, tt.exit)
		}
	}
}

// TestBenchWS loads a ws listener served by the built-in places worker:
// 32 calls in flight on two long-lived connections, every one answered.
func TestBenchWS(t *testing.T) {
	addr := wsNode(t, "/", "", "")
	var out, errb bytes.Buffer
	err := Run(context.Background(), []string{"bench", "--count", "500", "-c", "32", "--sockets", "2", "--payload", `{"limit": 2}`,
		"ws://" + addr.String() + "/InterestingPlaces/GetRandom"}, &out, &errb)
	if err != nil {
		t.Fatalf("bench: %v (%s)", err, errb.String())
	}
	for _, want := range []string{"closed loop, 32 in flight on 2 connections", "sent 500  answered 500  lost 0  errors 0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestSendWSS sends GetRandom to a wss listener whose certificate is its
// own: refused without --cacert, answered with it; bench loads it too.
func TestSendWSS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certtest.WriteSelfSigned(t, certFile, keyFile, "udpgate test")
	addr := wsNode(t, "/", certFile, keyFile)
	url := "wss://" + addr.String() + "/InterestingPlaces/GetRandom"
	var out, errb bytes.Buffer
	err := Run(context.Background(), []string{"send", url, `{"limit": 1}`}, &out, &errb)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "wss://"+addr.String()+"/: tls: failed to verify certificate") {
		t.Errorf("without --cacert: %v (exit %d), want a certificate error", err, exitCode(err))

	}
	if err := Run(context.Background(), []string{"send", "--cacert", certFile, url, `{"limit": 1}`}, &out, &errb); err != nil || !strings.Contains(out.String(), `"name"`) {
		t.Errorf("with --cacert: %v, printed %q (%s)", err, out.String(), errb.String())
	}
	if err := Run(context.Background(), []string{"send", "--cacert", keyFile, url, `{"limit": 1}`}, &out, &errb); exitCode(err) != 2 {
		t.Errorf("--cacert of a key: %v (exit %d), want a usage error", err, exitCode(err))
	}
	out.Reset()
	if err := Run(context.Background(), []string{"bench", "--cacert", certFile, "--count", "100", "-c", "8", "--payload", `{"limit": 1}`, url}, &out, &errb); err != nil ||
		!strings.Contains(out.String(), "answered 100  lost 0  errors 0") {
		t.Errorf("bench --cacert: %v\n%s", err, out.String())
	}
}
