package workers

import (
	"fmt"
	"strconv"

	"github.com/udpgate/udpgate/schemas"
)

// RPCRequest is what a call from an rpc listener names, besides its params
// (Request.Body).
type RPCRequest struct {
	Service string
	Method  string
	// ID is the client's call id; the gateway puts it in the reply itself.
	ID uint64
	// Connection is the WebSocket connection a call from a ws listener
	// came on (udpgate-ws-connection), to push to it later (Push);
	// empty for a call from an rpc listener.
	Connection string
}

func parseRPC(h map[string][]string) (*RPCRequest, error) {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	r := &RPCRequest{Service: get(schemas.HeaderRPCService), Method: get(schemas.HeaderRPCMethod), Connection: get(schemas.HeaderWSConnection)}
	if v := get(schemas.HeaderRPCID); v != "" {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return r, fmt.Errorf("bad %s %q", schemas.HeaderRPCID, v)
		}
		r.ID = id
	}
	return r, nil
}

// RPCStatus is the status of an RPC reply: gRPC's status codes, as in
// schemas/proto/udpgate/rpc/v1/envelope.proto.
type RPCStatus int32

// The RPC statuses handlers set most.
const (
	RPCOK               RPCStatus = 0
	RPCInvalidArgument  RPCStatus = 3
	RPCNotFound         RPCStatus = 5
	RPCPermissionDenied RPCStatus = 7
	// RPCResourceExhausted is the status of a call shed by an overloaded
	// worker, which the SDK sets itself (see Server).
	RPCResourceExhausted RPCStatus = 8
	RPCUnimplemented     RPCStatus = 12
	RPCInternal          RPCStatus = 13
	RPCUnavailable       RPCStatus = 14
)

// SetRPCStatus sets the status of an RPC reply and its error message for
// people. A reply without a status is RPCOK. Write the reply's body, if
// any, with w.Write: it is the response message, serialized.
func SetRPCStatus(w ResponseWriter, status RPCStatus, msg string) {
	w.Header().Set(schemas.HeaderRPCStatus, strconv.Itoa(int(status)))
	if msg != "" {
		w.Header().Set(schemas.HeaderRPCError, msg)
	}
}
