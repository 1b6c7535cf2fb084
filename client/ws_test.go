package client_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

func TestParseWS(t *testing.T) {
	tests := []struct {
		url, want, service, method string
	}{
		{"ws://127.0.0.1:8080/InterestingPlaces/GetRandom", "ws://127.0.0.1:8080/", "InterestingPlaces", "GetRandom"},
		{"ws://127.0.0.1:8080/rpc/InterestingPlaces/GetRandom", "ws://127.0.0.1:8080/rpc", "InterestingPlaces", "GetRandom"},
		{"wss://gw.example.com/a/b/S/M?k=v", "wss://gw.example.com/a/b?k=v", "S", "M"},
		{"ws://[::1]:80/S/M", "ws://[::1]:80/", "S", "M"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, err := client.ParseWS(tt.url)
			if err != nil || got.URL != tt.want || got.Service != tt.service || got.Method != tt.method {
				t.Errorf("%+v, %v; want %s %s/%s", got, err, tt.want, tt.service, tt.method)
			}
		})
	}
	for _, bad := range []string{"ws://127.0.0.1:8080/GetRandom", "ws://127.0.0.1:8080/S/", "ws:///S/M", "http://h/S/M", "ws://h:99999/S/M", "ws://h:x/S/M", "ws://h/S/M#f"} {
		if _, err := client.ParseWS(bad); !errors.Is(err, client.ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", bad, err)
		}
	}
}

// wsResponder serves WebSocket on an httptest server (TLS with tls) at
// path: each message is a Call, answered in the same form (binary, or
// base64 text) with the Reply that handle returns, given the call's id.
// The first reply of each connection has the wrong id, which the client
// must reject.
func wsResponder(t *testing.T, tls bool, path string, handle func(*rpcpb.Call) *rpcpb.Reply) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for first := true; ; first = false {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				b, _ = base64.StdEncoding.DecodeString(string(b))
			}
			var call rpcpb.Call
			if err := proto.Unmarshal(b, &call); err != nil {
				c.Close(websocket.StatusInvalidFramePayloadData, "not a Call")
				return
			}
			if first {
				wrong, _ := proto.Marshal(&rpcpb.Reply{Id: call.Id + 1})
				c.Write(r.Context(), websocket.MessageBinary, wrong)
			}
			rep := handle(&call)
			rep.Id = call.Id
			b, _ = proto.Marshal(rep)
			if typ == websocket.MessageText {
				b = []byte(base64.StdEncoding.EncodeToString(b))
			}
			if c.Write(r.Context(), typ, b) != nil {
				return
			}
		}
	})
	var s *httptest.Server
	if tls {
		s = httptest.NewTLSServer(h)
	} else {
		s = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	return s
}

func places(call *rpcpb.Call) *rpcpb.Reply {
	var req placespb.GetRandomRequest
	if proto.Unmarshal(call.Params, &req) != nil || req.Limit < 1 {
		return &rpcpb.Reply{Status: rpcpb.Status_STATUS_INVALID_ARGUMENT, Error: "limit must be at least 1"}
	}
	body, _ := proto.Marshal(&placespb.GetRandomResponse{Places: make([]*placespb.Place, req.Limit)})
	return &rpcpb.Reply{Body: body}
}

func TestWS(t *testing.T) {
	s := wsResponder(t, false, "/rpc", places)
	base := "ws" + strings.TrimPrefix(s.URL, "http") + "/rpc/InterestingPlaces/GetRandom"
	for _, text := range []bool{false, true} {
		c, err := client.Dial(context.Background(), base, client.Options{Text: text, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			res, err := c.Do(context.Background(), []byte(`{"limit": 3}`))
			if err != nil {
				t.Fatalf("text %v: %v", text, err)
			}
			got, ok := res.Response.(*placespb.GetRandomResponse)
			if !ok || len(got.Places) != 3 || res.Status != rpcpb.Status_STATUS_OK || res.Tries != 1 || res.From.String() != strings.TrimPrefix(s.URL, "http://") {
				t.Errorf("text %v: %+v", text, res)
			}
			if want := 1 - i; len(res.Rejected) != want || want == 1 && !strings.Contains(res.Rejected[0].Reason, "does not match request id") {
				t.Errorf("text %v, call %d: rejected %v", text, i, res.Rejected)
			}
		}
		res, err := c.Do(context.Background(), []byte(`{"limit": 0}`))
		if err != nil || res.Status != rpcpb.Status_STATUS_INVALID_ARGUMENT || res.Error != "limit must be at least 1" {
			t.Errorf("limit 0: %+v, %v", res, err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		c.Close()
	}
}

// TestWSS dials a wss:// listener through an HTTP client that trusts the
// test server's certificate; the default client does not.
func TestWSS(t *testing.T) {
	s := wsResponder(t, true, "/", places)
	target, err := client.ParseWS("wss" + strings.TrimPrefix(s.URL, "https") + "/InterestingPlaces/GetRandom")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.DialWS(ctx, target.URL, client.WSOptions{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: %v", err)
	}
	c, err := client.DialWS(ctx, target.URL, client.WSOptions{HTTPClient: s.Client()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	params, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: 1})
	call, _ := proto.Marshal(&rpcpb.Call{Id: 7, Service: target.Service, Method: target.Method, Params: params})
	if err := c.Send(ctx, call); err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	var buf []byte
	for range 2 { // the wrong id first
		if buf, err = c.Receive(ctx, buf); err != nil {
			t.Fatal(err)
		}
		var r rpcpb.Reply
		if err := proto.Unmarshal(buf, &r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Id)
	}
	if ids[0] != 8 || ids[1] != 7 {
		t.Errorf("reply ids %v", ids)
	}
}

func TestWSDialErrors(t *testing.T) {
	s := wsResponder(t, false, "/rpc", places)
	host := strings.TrimPrefix(s.URL, "http://")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	silent, err := net.Listen("tcp4", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	for _, tt := range []struct{ url, want string }{
		{"ws://" + closed + "/S/M", "connect: connection refused"},
		{"ws://" + host + "/wrong/S/M", "ws://" + host + "/wrong: upgrade refused: HTTP 404 Not Found (404 page not found)"},
		{"ws://" + silent.Addr().String() + "/S/M", "no reply to the WebSocket upgrade within 200ms"},
	} {
		_, err := client.Dial(context.Background(), tt.url, client.Options{Timeout: 200 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), tt.want) || errors.Is(err, client.ErrInvalid) {
			t.Errorf("%s: %v, want %q", tt.url, err, tt.want)
		}
	}
}

// TestWSNoReply: a call the listener does not answer in time is lost;
// the connection stays, and the late reply is rejected by the next call.
func TestWSNoReply(t *testing.T) {
	slow := make(chan struct{})
	s := wsResponder(t, false, "/", func(call *rpcpb.Call) *rpcpb.Reply {
		if string(call.Params) == "slow" {
			<-slow
		}
		return &rpcpb.Reply{Body: call.Params}
	})
	c, err := client.Dial(context.Background(), "ws"+strings.TrimPrefix(s.URL, "http")+"/Unknown/Echo", client.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer close(slow)
	res, err := c.Do(context.Background(), []byte("hi"))
	if err != nil || string(res.Body) != "hi" {
		t.Fatalf("%+v, %v", res, err)
	}
	if _, err := c.Do(context.Background(), []byte("slow")); !errors.Is(err, client.ErrNoReply) {
		t.Fatalf("slow: %v, want no reply", err)
	}
}

// TestWSCloseSilent: Close does not wait long for the close frame of a
// listener that sends none.
func TestWSCloseSilent(t *testing.T) {
	stop := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := websocket.Accept(w, r, nil); err == nil {
			defer c.CloseNow()
			<-stop
		}
	}))
	defer s.Close()
	defer close(stop)
	c, err := client.DialWS(context.Background(), "ws"+strings.TrimPrefix(s.URL, "http")+"/", client.WSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.Close()
	// The library alone waits 5 s, and 5 s more if a reader holds the
	// connection; Close gives up after 1 s.
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Close took %s", d)
	}
	if _, err := c.Receive(context.Background(), nil); err == nil {
		t.Error("Receive after Close: no error")
	}
}
