package builtin

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"google.golang.org/genproto/googleapis/type/latlng"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/workers"
)

// places are the places Places serves.
var places = []*placespb.Place{
	{Name: "Natural History Museum, London, UK", Location: &latlng.LatLng{Latitude: 51.496727, Longitude: -0.176484}},
	{Name: "Copernicus Science Centre", Location: &latlng.LatLng{Latitude: 52.24189590931264, Longitude: 21.028735065872638}},
	{Name: "Ustka Lighthouse", Location: &latlng.LatLng{Latitude: 54.58805789697384, Longitude: 16.8546758958559}},
	{Name: "The British Museum", Location: &latlng.LatLng{Latitude: 51.51954671919121, Longitude: -0.12699952985545082}},
}

// The RPC service and method Places serves.
const (
	PlacesService = "InterestingPlaces"
	PlacesMethod  = "GetRandom"
)

// Places serves the RPC service InterestingPlaces
// (schemas/proto/udpgate/places/v1/places.proto): GetRandom(limit) returns
// up to limit distinct places in random order. A limit outside 1..4 or
// params that do not decode get RPCInvalidArgument; other services and
// methods RPCUnimplemented.
type Places struct {
	// Perm returns a random permutation of 0..n-1; nil uses math/rand/v2.
	Perm func(n int) []int
}

// Handle implements workers.Handler.
func (p Places) Handle(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
	if r.RPC == nil {
		return errors.New("builtin: places serves rpc listeners only")
	}
	if r.RPC.Service != PlacesService || r.RPC.Method != PlacesMethod {
		workers.SetRPCStatus(w, workers.RPCUnimplemented, fmt.Sprintf("no method %s/%s (InterestingPlaces/GetRandom is served)", r.RPC.Service, r.RPC.Method))
		return nil
	}
	var req placespb.GetRandomRequest
	if err := proto.Unmarshal(r.Body, &req); err != nil {
		workers.SetRPCStatus(w, workers.RPCInvalidArgument, "params are not a GetRandomRequest: "+err.Error())
		return nil
	}
	if req.Limit < 1 || int(req.Limit) > len(places) {
		workers.SetRPCStatus(w, workers.RPCInvalidArgument, fmt.Sprintf("limit %d is outside 1..%d", req.Limit, len(places)))
		return nil
	}
	perm := p.Perm
	if perm == nil {
		perm = rand.Perm
	}
	resp := &placespb.GetRandomResponse{}
	for _, i := range perm(len(places))[:req.Limit] {
		resp.Places = append(resp.Places, places[i])
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
