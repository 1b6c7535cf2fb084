package client

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/udpgate/udpgate/schemas/placespb" // registers InterestingPlaces
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Method is an RPC method whose request and response messages the client
// knows, because their Go code is linked into the program (schemas/placespb
// is).
type Method struct {
	// Service and Name are the wire names, as in the Call: the service's
	// short name ("InterestingPlaces") and the method's ("GetRandom").
	Service, Name string
	// Request and Response are the method's message types.
	Request, Response protoreflect.MessageType
}

// LookupMethod finds service/method among the protobuf services linked into
// the program. service is the short name the Call carries, or the full name
// (udpgate.places.v1.InterestingPlaces).
func LookupMethod(service, method string) (Method, bool) {
	var found Method
	ok := false
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		svcs := fd.Services()
		for i := range svcs.Len() {
			sd := svcs.Get(i)
			if string(sd.Name()) != service && string(sd.FullName()) != service {
				continue
			}
			md := sd.Methods().ByName(protoreflect.Name(method))
			if md == nil {
				continue
			}
			req, err1 := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			resp, err2 := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
			if err1 != nil || err2 != nil {
				continue
			}
			found, ok = Method{Service: string(sd.Name()), Name: method, Request: req, Response: resp}, true
			return false
		}
		return true
	})
	return found, ok
}

// Method returns the RPC method of an rpc:// or ws:// Conn, if the client knows its
// messages.
func (c *Conn) Method() (Method, bool) {
	if c.known == nil {
		return Method{}, false
	}
	return *c.known, true
}

// doRPC sends one Call with a fresh random id and accepts only a Reply with
// the same id.
func (c *Conn) doRPC(ctx context.Context, payload []byte) (Result, error) {
	id, call, err := c.call(payload)
	if err != nil {
		return Result{ContentFormat: -1}, err
	}
	var reply rpcpb.Reply
	res, err := c.exchange(ctx, call, func(b []byte) (bool, string) {
		if proto.Unmarshal(b, &reply) != nil {
			return false, "not an RPC reply"
		}
		if reply.Id != id {
			return false, fmt.Sprintf("reply id %d does not match request id %d", reply.Id, id)
		}
		return true, ""
	})
	if err != nil {
		return res, err
	}
	return res, c.setReply(&res, &reply)
}

// call encodes a Call of payload (see Do) with a fresh random id.
func (c *Conn) call(payload []byte) (uint64, []byte, error) {
	params := payload
	if c.known != nil {
		m := c.known.Request.New().Interface()
		if len(bytes.TrimSpace(payload)) > 0 {
			if err := protojson.Unmarshal(payload, m); err != nil {
				return 0, nil, fmt.Errorf("client: params for %s/%s: %w", c.service, c.method, err)
			}
		}
		var err error
		if params, err = proto.Marshal(m); err != nil {
			return 0, nil, fmt.Errorf("client: params for %s/%s: %w", c.service, c.method, err)
		}
	}
	id := rand.Uint64()
	call, err := proto.Marshal(&rpcpb.Call{Id: id, Service: c.service, Method: c.method, Params: params})
	if err != nil {
		return 0, nil, fmt.Errorf("client: %w", err)
	}
	return id, call, nil
}

// setReply fills res in from reply, decoding its body when the method is
// known.
func (c *Conn) setReply(res *Result, reply *rpcpb.Reply) error {
	res.Status, res.Error, res.Body = reply.Status, reply.Error, reply.Body
	if c.known != nil && reply.Status == rpcpb.Status_STATUS_OK {
		m := c.known.Response.New().Interface()
		if err := proto.Unmarshal(reply.Body, m); err != nil {
			return fmt.Errorf("client: reply body of %s/%s: %w", c.service, c.method, err)
		}
		res.Response = m
	}
	return nil
}
