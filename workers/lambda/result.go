package lambda

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/udpgate/udpgate/workers"
)

// Result is the object a function may return in ShapeNative instead of a
// plain string (schemas/lambda/result.schema.json). Every field is
// optional; an object is always a reply, {} an empty one. Fields that do
// not apply to the request's protocol are checked, then ignored; unknown
// fields are ignored.
type Result struct {
	// Body is the reply body: UTF-8 text, or standard base64 if
	// IsBase64Encoded.
	Body            string `json:"body,omitempty"`
	IsBase64Encoded bool   `json:"isBase64Encoded,omitempty"`
	// Code is the CoAP response code, "c.dd" with class 2, 4 or 5 and
	// detail 00 to 31; default "2.05".
	Code string `json:"code,omitempty"`
	// ContentFormat is the CoAP Content-Format of the body, 0 to 65535;
	// default none.
	ContentFormat *int `json:"content_format,omitempty"`
	// Status is the RPC status, a gRPC status code from 0 (OK) to 16;
	// default 0, or 2 (UNKNOWN) if Error is set.
	Status *int `json:"status,omitempty"`
	// Error is the RPC reply's error message for people.
	Error string `json:"error,omitempty"`
}

// rpcUnknown and rpcDeadlineExceeded are gRPC's status codes 2 and 4.
const (
	rpcUnknown          workers.RPCStatus = 2
	rpcDeadlineExceeded workers.RPCStatus = 4
	maxRPCStatus                          = 16
)

// reply is what a function asked for one request.
type reply struct {
	none          bool // no reply: answered as at the deadline
	body          []byte
	code          workers.Code // "" for the default
	contentFormat int          // -1 for none
	status        workers.RPCStatus
	hasStatus     bool
	errMsg        string
}

var errNotResult = errors.New("result is not a JSON string, object or null")

// parseResult checks and decodes a native result.
func parseResult(p []byte) (reply, error) {
	p = bytes.TrimSpace(p)
	if len(p) == 0 || string(p) == "null" {
		return reply{none: true}, nil
	}
	switch p[0] {
	case '"':
		var s string
		if err := json.Unmarshal(p, &s); err != nil {
			return reply{}, fmt.Errorf("result string: %w", err)
		}
		return reply{body: []byte(s), contentFormat: -1}, nil
	case '{':
		var res Result
		if err := json.Unmarshal(p, &res); err != nil {
			return reply{}, fmt.Errorf("result object: %w", err)
		}
		return res.reply()
	}
	return reply{}, fmt.Errorf("%w: %s", errNotResult, truncate(p, 64))
}

func (res *Result) reply() (reply, error) {
	rp := reply{body: []byte(res.Body), contentFormat: -1, errMsg: res.Error}
	if res.IsBase64Encoded {
		body, err := b64.DecodeString(res.Body)
		if err != nil {
			return reply{}, fmt.Errorf("result body: bad base64: %w", err)
		}
		rp.body = body
	}
	if res.Code != "" {
		c, err := workers.ParseCode(res.Code)
		if err != nil {
			return reply{}, fmt.Errorf("result code: %w", err)
		}
		rp.code = c
	}
	if cf := res.ContentFormat; cf != nil {
		if *cf < 0 || *cf > 0xffff {
			return reply{}, fmt.Errorf("result content_format %d: want 0 to 65535", *cf)
		}
		rp.contentFormat = *cf
	}
	switch {
	case res.Status != nil:
		if *res.Status < 0 || *res.Status > maxRPCStatus {
			return reply{}, fmt.Errorf("result status %d: want 0 to %d", *res.Status, maxRPCStatus)
		}
		rp.status, rp.hasStatus = workers.RPCStatus(*res.Status), true
	case res.Error != "":
		rp.status, rp.hasStatus = rpcUnknown, true
	}
	return rp, nil
}

// write writes rp as the reply to r, as its protocol needs.
func (rp reply) write(w workers.ResponseWriter, r *workers.Request) {
	if rp.none {
		noReply(w, r)
		return
	}
	switch {
	case r.CoAP != nil:
		cw := workers.NewCoAPResponse(w)
		if rp.code != "" {
			cw.SetCode(rp.code)
		}
		if rp.contentFormat >= 0 {
			cw.SetContentFormat(rp.contentFormat)
		}
	case r.RPC != nil:
		if rp.hasStatus {
			workers.SetRPCStatus(w, rp.status, rp.errMsg)
		}
	}
	w.Write(rp.body)
}

// noReply answers r as the gateway would at its deadline: nothing for raw,
// 5.04 for CoAP, STATUS_DEADLINE_EXCEEDED for RPC, but at once.
func noReply(w workers.ResponseWriter, r *workers.Request) {
	switch {
	case r.CoAP != nil:
		workers.NewCoAPResponse(w).SetCode(workers.GatewayTimeout)
	case r.RPC != nil:
		workers.SetRPCStatus(w, rpcDeadlineExceeded, "no reply from the function")
	}
}
