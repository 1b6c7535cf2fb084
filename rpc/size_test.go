package rpc

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// The sizes the amplification limit uses are never more than what is
// really on the wire: Size at most the encoded call, ReplySize at least
// the encoded reply.
func TestSizes(t *testing.T) {
	for _, tt := range []struct {
		call   *rpcpb.Call
		status string
		errMsg string
		body   []byte
	}{
		{&rpcpb.Call{Service: "S", Method: "M"}, schemas.StatusOK, "", nil},
		{&rpcpb.Call{Id: 300, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte(`{"limit":2}`)}, schemas.StatusOK, "", make([]byte, 200)},
		{&rpcpb.Call{Id: 1 << 40, Service: "x", Method: "y", Params: make([]byte, 1000)}, schemas.StatusOK, "bad input", []byte("x")},
		{&rpcpb.Call{Id: 7, Service: "x", Method: "y"}, schemas.StatusError, "", []byte("ignored")},
	} {
		wire, err := proto.Marshal(tt.call)
		if err != nil {
			t.Fatal(err)
		}
		c := &Call{ID: tt.call.Id, Service: tt.call.Service, Method: tt.call.Method, Params: tt.call.Params}
		if got := c.Size(); got != len(wire) {
			t.Errorf("%v: Size() = %d, the call is %d bytes", tt.call, got, len(wire))
		}
		header := map[string][]string{schemas.HeaderRPCError: {tt.errMsg}}
		r := &rpcpb.Reply{Id: c.ID, Status: rpcpb.Status_STATUS_RESOURCE_EXHAUSTED, Error: tt.errMsg, Body: tt.body}
		if tt.status != schemas.StatusOK {
			r = &rpcpb.Reply{Id: c.ID, Status: rpcpb.Status_STATUS_INTERNAL}
		}
		reply, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ReplySize(tt.status, header, tt.body); got < len(reply) {
			t.Errorf("%v: ReplySize() = %d, the reply is %d bytes", tt.call, got, len(reply))
		}
	}
}
