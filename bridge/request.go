package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"time"
)

// Error is a refused or failed request: the HTTP status (also in NATS
// replies), the reason that labels udpgate_bridge_refused_total, and a
// message for the caller.
type Error struct {
	Status     int
	Reason     string
	Msg        string
	RetryAfter time.Duration // send_rate: when the binding may send again
}

func (e *Error) Error() string { return "bridge: " + e.Msg }

// Reasons of refusals, the label of udpgate_bridge_refused_total.
const (
	reasonOff          = iota // no ports may be leased, or HTTP without a token
	reasonUnauthorized        // HTTP: no or a wrong bearer token
	reasonBadRequest          // bad JSON, address, base64, lease, id
	reasonPortRange           // the port is outside UDPGATE_BRIDGE_PORTS
	reasonPortInUse           // the port (or every port of the ranges) is taken
	reasonBindFailed          // the socket could not be bound otherwise
	reasonBindingCap          // UDPGATE_BRIDGE_MAX_BINDINGS reached
	reasonNotFound            // no such binding on this node
	reasonSendDest            // the destination is not allowed
	reasonSendRate            // the binding sends too fast
	reasonSendFailed          // the socket refused the datagram
	reasonReaderCap           // the binding has its most SSE streams
	reasonNotServing          // the bridge or the gateway is starting or stopping
	numReasons
)

var reasons = [numReasons]struct {
	name   string
	status int
}{
	reasonOff:          {"off", http.StatusForbidden},
	reasonUnauthorized: {"unauthorized", http.StatusUnauthorized},
	reasonBadRequest:   {"bad_request", http.StatusBadRequest},
	reasonPortRange:    {"port_range", http.StatusForbidden},
	reasonPortInUse:    {"port_in_use", http.StatusConflict},
	reasonBindFailed:   {"bind_failed", http.StatusBadRequest},
	reasonBindingCap:   {"binding_cap", http.StatusTooManyRequests},
	reasonNotFound:     {"not_found", http.StatusNotFound},
	reasonSendDest:     {"send_dest", http.StatusForbidden},
	reasonSendRate:     {"send_rate", http.StatusTooManyRequests},
	reasonSendFailed:   {"send_failed", http.StatusBadGateway},
	reasonReaderCap:    {"reader_cap", http.StatusTooManyRequests},
	reasonNotServing:   {"not_serving", http.StatusServiceUnavailable},
}

func errorf(reason int, format string, args ...any) *Error {
	return &Error{Status: reasons[reason].status, Reason: reasons[reason].name, Msg: fmt.Sprintf(format, args...)}
}

// reasonIndex returns the index of the reason named name.
func reasonIndex(name string) int {
	for i, r := range reasons {
		if r.name == name {
			return i
		}
	}
	return reasonBadRequest
}

// errorBody is the JSON of an Error, over HTTP and NATS.
type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
	Status int    `json:"status"`
}

func (e *Error) body() []byte {
	b, _ := json.Marshal(errorBody{Error: e.Msg, Reason: e.Reason, Status: e.Status})
	return b
}

// decodeJSON decodes one JSON object from body into v; an empty body
// leaves v as it is.
func decodeJSON(body []byte, v any) *Error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return errorf(reasonBadRequest, "body is a JSON %s, not an object", te.Value)
			}
			want := "a string"
			if k := te.Type.Kind(); k >= reflect.Int && k <= reflect.Int64 {
				want = "an integer"
			}
			return errorf(reasonBadRequest, "%s must be %s, not %s", te.Field, want, te.Value)
		}
		return errorf(reasonBadRequest, "body is not JSON: %v", err)
	}
	if dec.More() {
		return errorf(reasonBadRequest, "body has more than one JSON value")
	}
	return nil
}

// DecodeBind decodes the body of a bind: a JSON object with port, addr
// and lease_secs, each optional (an empty body takes every default).
func DecodeBind(body []byte) (BindRequest, *Error) {
	r := BindRequest{LeaseSecs: int64(DefaultLease / time.Second)}
	e := decodeJSON(body, &r)
	return r, e
}

// SendRequest is the body of a send: the destination (IP:PORT, [IPv6]:PORT)
// and the datagram, base64 (standard alphabet, padded). Over NATS, ID names
// the binding.
type SendRequest struct {
	ID      string `json:"id,omitempty"`
	Dest    string `json:"dest"`
	Payload string `json:"payload"`
}

// DecodeSend decodes the body of a send and checks its destination and
// payload.
func DecodeSend(body []byte) (SendRequest, netip.AddrPort, []byte, *Error) {
	var r SendRequest
	if e := decodeJSON(body, &r); e != nil {
		return r, netip.AddrPort{}, nil, e
	}
	dest, err := netip.ParseAddrPort(r.Dest)
	if err != nil || dest.Port() == 0 || dest.Addr().Zone() != "" || dest.Addr().IsUnspecified() {
		return r, netip.AddrPort{}, nil, errorf(reasonBadRequest, "dest %q is not an address IP:PORT (like 192.0.2.7:5000 or [2001:db8::7]:5000)", r.Dest)
	}
	if base64.StdEncoding.DecodedLen(len(r.Payload)) > MaxPayload+3 {
		return r, netip.AddrPort{}, nil, errorf(reasonBadRequest, "payload is larger than a UDP datagram (%d bytes)", MaxPayload)
	}
	payload, err := base64.StdEncoding.DecodeString(r.Payload)
	if err != nil {
		return r, netip.AddrPort{}, nil, errorf(reasonBadRequest, "payload is not base64 (standard alphabet, padded): %v", err)
	}
	if len(payload) > MaxPayload {
		return r, netip.AddrPort{}, nil, errorf(reasonBadRequest, "payload is %d bytes, larger than a UDP datagram (%d)", len(payload), MaxPayload)
	}
	return r, dest, payload, nil
}

// idRequest is the body of a NATS heartbeat or delete.
type idRequest struct {
	ID string `json:"id"`
}
