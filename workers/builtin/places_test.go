package builtin_test

import (
	"context"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

func TestPlaces(t *testing.T) {
	params := func(limit int32) []byte {
		b, _ := proto.Marshal(&placespb.GetRandomRequest{Limit: limit})
		return b
	}
	tests := []struct {
		name            string
		service, method string
		body            []byte
		status          workers.RPCStatus
		places          int
	}{
		{"limit 1", "InterestingPlaces", "GetRandom", params(1), workers.RPCOK, 1},
		{"limit 4", "InterestingPlaces", "GetRandom", params(4), workers.RPCOK, 4},
		{"limit 0", "InterestingPlaces", "GetRandom", params(0), workers.RPCInvalidArgument, 0},
		{"limit 5", "InterestingPlaces", "GetRandom", params(5), workers.RPCInvalidArgument, 0},
		{"limit -1", "InterestingPlaces", "GetRandom", params(-1), workers.RPCInvalidArgument, 0},
		{"params not protobuf", "InterestingPlaces", "GetRandom", []byte{0xff, 0xff}, workers.RPCInvalidArgument, 0},
		{"unknown method", "InterestingPlaces", "GetAll", nil, workers.RPCUnimplemented, 0},
		{"unknown service", "Other", "GetRandom", nil, workers.RPCUnimplemented, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &recorder{}
			r := &workers.Request{Body: tt.body, RPC: &workers.RPCRequest{Service: tt.service, Method: tt.method, ID: 7}}
			if err := (builtin.Places{}).Handle(context.Background(), w, r); err != nil {
				t.Fatal(err)
			}
			status := 0
			if s := w.Header().Get(schemas.HeaderRPCStatus); s != "" {
				status, _ = strconv.Atoi(s)
			}
			if workers.RPCStatus(status) != tt.status {
				t.Fatalf("status %d (%s), want %d", status, w.Header().Get(schemas.HeaderRPCError), tt.status)
			}
			if tt.status != workers.RPCOK {
				if w.Header().Get(schemas.HeaderRPCError) == "" {
					t.Error("no error message")
				}
				return
			}
			var resp placespb.GetRandomResponse
			if err := proto.Unmarshal(w.body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, p := range resp.Places {
				if seen[p.Name] || p.Location == nil || p.Location.Latitude < 50 {
					t.Errorf("bad or repeated place %v", p)
				}
				seen[p.Name] = true
			}
			if len(resp.Places) != tt.places {
				t.Errorf("%d places, want %d", len(resp.Places), tt.places)
			}
		})
	}
}
