package node

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// TestNodeWebSocket: a node whose listeners are a raw one and a ws one
// on a path, configured as `udpgate run` reads them, answers GetRandom
// sent as base64 in a text message, from an allowed origin, with the
// built-in places worker on the ws listener's port.
func TestNodeWebSocket(t *testing.T) {
	cfg := nodeConfig(t, map[string]string{"WS_ORIGINS": "*.example.com"})
	ls, err := config.ParseListeners("127.0.0.1:1/raw,127.0.0.1:2/ws;path=/rpc")
	if err != nil {
		t.Fatal(err)
	}
	for i := range ls { // any free port
		ls[i].Addr = netip.AddrPortFrom(ls[i].Addr.Addr(), 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := Start(ctx, cfg, discard, Options{Listeners: ls, Workers: []Worker{{Name: "places", Listener: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if len(n.Ports) != 2 || n.Ports[0].Port() == 0 || n.Ports[1] == n.Ports[0] {
		t.Fatalf("ports %v", n.Ports)
	}
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, "ws://"+n.Ports[1].String()+"/rpc", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example.com"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	params, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: 3})
	call, _ := proto.Marshal(&rpcpb.Call{Id: 42, Service: "InterestingPlaces", Method: "GetRandom", Params: params})
	if err := c.Write(dctx, websocket.MessageText, []byte(base64.StdEncoding.EncodeToString(call))); err != nil {
		t.Fatal(err)
	}
	typ, b, err := c.Read(dctx)
	if err != nil || typ != websocket.MessageText {
		t.Fatalf("read %v, %v", typ, err)
	}
	var r rpcpb.Reply
	var places placespb.GetRandomResponse
	if b, err = base64.StdEncoding.DecodeString(string(b)); err != nil || proto.Unmarshal(b, &r) != nil || proto.Unmarshal(r.Body, &places) != nil {
		t.Fatalf("reply % x: %v", b, err)
	}
	if r.Id != 42 || r.Status != rpcpb.Status_STATUS_OK || len(places.Places) != 3 {
		t.Fatalf("reply %v with %d places", &r, len(places.Places))
	}
	name := schemas.Listener(n.Ports[1].Port(), schemas.ProtocolWS)
	if st := n.Gateway.Stats(); st.WS[name].Accepted != 1 || st.Ingress[name].Published != 1 {
		t.Errorf("stats of %s: %+v, %+v", name, st.WS[name], st.Ingress[name])
	}
}
