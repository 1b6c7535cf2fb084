package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/type/latlng"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// rpcResponder answers RPC calls: the first copy of each call gets a Reply
// with the wrong id (which the client must reject), the second the Reply
// that handle returns, with the call's id.
func rpcResponder(t *testing.T, handle func(*rpcpb.Call) *rpcpb.Reply) string {
	t.Helper()
	addr, _ := responder(t, func(n int, req []byte) []reply {
		var call rpcpb.Call
		if err := proto.Unmarshal(req, &call); err != nil {
			t.Errorf("responder: not a Call: %v", err)
			return nil
		}
		r := &rpcpb.Reply{Id: call.Id + 1}
		if n%2 == 0 {
			r = handle(&call)
			r.Id = call.Id
		}
		b, err := proto.Marshal(r)
		if err != nil {
			t.Errorf("responder: %v", err)
		}
		return []reply{{body: b}}
	})
	return addr.String()
}

func TestRPCKnownMethod(t *testing.T) {
	addr := rpcResponder(t, func(call *rpcpb.Call) *rpcpb.Reply {
		var req placespb.GetRandomRequest
		if call.Service != "InterestingPlaces" || call.Method != "GetRandom" || proto.Unmarshal(call.Params, &req) != nil {
			return &rpcpb.Reply{Status: rpcpb.Status_STATUS_UNIMPLEMENTED}
		}
		if req.Limit < 1 || req.Limit > 3 {
			return &rpcpb.Reply{Status: rpcpb.Status_STATUS_INVALID_ARGUMENT, Error: fmt.Sprintf("limit %d is not between 1 and 3", req.Limit)}
		}
		var resp placespb.GetRandomResponse
		for i := range req.Limit {
			resp.Places = append(resp.Places, &placespb.Place{Name: fmt.Sprint("place ", i), Location: &latlng.LatLng{Latitude: 48.85, Longitude: 2.35}})
		}
		body, _ := proto.Marshal(&resp)
		return &rpcpb.Reply{Body: body}
	})
	c := dial(t, "rpc://"+addr+"/InterestingPlaces/GetRandom", client.Options{Wait: 50 * time.Millisecond, Timeout: 10 * time.Second})
	if m, ok := c.Method(); !ok || m.Request.Descriptor().FullName() != "udpgate.places.v1.GetRandomRequest" {
		t.Fatalf("method %+v, %v: not known", m, ok)
	}
	res, err := c.Do(context.Background(), []byte(`{"limit": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, ok := res.Response.(*placespb.GetRandomResponse)
	if !ok || len(resp.Places) != 2 || resp.Places[1].Name != "place 1" || res.Status != rpcpb.Status_STATUS_OK {
		t.Errorf("result %+v", res)
	}
	if res.Tries != 2 || len(res.Rejected) != 1 {
		t.Fatalf("%d tries, rejected %v; want 2 tries and the first reply rejected", res.Tries, res.Rejected)
	}
	if r := res.Rejected[0].Reason; !strings.HasPrefix(r, "reply id ") || !strings.Contains(r, " does not match request id ") {
		t.Errorf("rejection %q", res.Rejected[0])
	}

	res, err = c.Do(context.Background(), []byte(`{"limit": 0}`))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != rpcpb.Status_STATUS_INVALID_ARGUMENT || res.Error != "limit 0 is not between 1 and 3" || res.Response != nil {
		t.Errorf("result %+v, want STATUS_INVALID_ARGUMENT", res)
	}

	if _, err := c.Do(context.Background(), []byte(`{"limit": "many"}`)); err == nil {
		t.Error("params that do not fit GetRandomRequest were sent")
	}
}

func TestRPCUnknownMethodIsRaw(t *testing.T) {
	addr := rpcResponder(t, func(call *rpcpb.Call) *rpcpb.Reply {
		return &rpcpb.Reply{Body: append([]byte(call.Service+"."+call.Method+":"), call.Params...)}
	})
	c := dial(t, "rpc://"+addr+"/Echo/Say", client.Options{Wait: 50 * time.Millisecond, Timeout: 10 * time.Second})
	if _, ok := c.Method(); ok {
		t.Error("Echo/Say is known")
	}
	res, err := c.Do(context.Background(), []byte("\x00raw\xff"))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Body) != "Echo.Say:\x00raw\xff" || res.Response != nil {
		t.Errorf("result %+v", res)
	}
}

func TestRPCRejectsNonReplies(t *testing.T) {
	addr, _ := responder(t, func(int, []byte) []reply { return []reply{{body: []byte{0xff, 0xff}}} })
	c := dial(t, "rpc://"+addr.String()+"/Echo/Say", client.Options{Wait: 50 * time.Millisecond, Timeout: 200 * time.Millisecond})
	res, err := c.Do(context.Background(), nil)
	if !errors.Is(err, client.ErrNoReply) || len(res.Rejected) == 0 || res.Rejected[0].Reason != "not an RPC reply" {
		t.Errorf("error %v, rejected %v", err, res.Rejected)
	}
}

func TestLookupMethod(t *testing.T) {
	for _, name := range []string{"InterestingPlaces", "udpgate.places.v1.InterestingPlaces"} {
		m, ok := client.LookupMethod(name, "GetRandom")
		if !ok || m.Service != "InterestingPlaces" || m.Name != "GetRandom" || m.Response.Descriptor().FullName() != "udpgate.places.v1.GetRandomResponse" {
			t.Errorf("LookupMethod(%q) = %+v, %v", name, m, ok)
		}
	}
	for _, sm := range [][2]string{{"InterestingPlaces", "GetAll"}, {"Nope", "GetRandom"}} {
		if _, ok := client.LookupMethod(sm[0], sm[1]); ok {
			t.Errorf("LookupMethod(%q, %q) found", sm[0], sm[1])
		}
	}
}
