package ingress

import (
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Admission decides which requests a listener sheds at the door, before
// it opens an exchange or publishes them: those on the subjects of a
// durable group that says it is overloaded (schemas.Overload). Shedding
// is asked on every request, and must cost next to nothing while nothing
// is shed; Shed is asked only when Shedding is true.
type Admission interface {
	// Shedding reports whether any subject is shed now.
	Shedding() bool
	// Shed reports whether requests on subject are shed now, and when a
	// client's retry is sensible (zero if unknown).
	Shed(subject string) (retry time.Duration, shed bool)
}

// shedSubject returns the request subject of d, whose subject Admission
// asks about: a raw listener's is constant, a CoAP request's comes from
// its method and path, an RPC call's from its service and method.
func (s *Server) shedSubject(d *datagram) string {
	switch {
	case d.coap != nil:
		return string(schemas.AppendCoAPSubject(nil, s.Prefix, s.port, d.coap.Method, d.coap.Segments))
	case d.rpc != nil:
		return string(schemas.AppendRPCSubject(nil, s.Prefix, s.port, d.rpc.Service, d.rpc.Method))
	}
	return s.subject
}

// shedAtDoor answers d, a request Admission sheds, with its protocol's
// overload status (CoAP 5.03 with Max-Age, RPC STATUS_RESOURCE_EXHAUSTED;
// a raw request gets nothing), and hands its capture copy, marked with
// schemas.HeaderShed, to the capture: every request is captured, and the
// workers that take the copy from the stream skip it. No exchange is
// opened and nothing goes to the direct groups.
func (s *Server) shedAtDoor(d datagram, retry time.Duration, captures chan<- capture) {
	s.stats.shed.Add(1)
	if r := d.replier(); r != nil {
		r.Reply(schemas.StatusOK, overloadHeader(d, retry), nil)
	}
	s.idSeq++
	msg, _ := s.msgs.Get().(*nats.Msg)
	msg, subject := newMessage(msg, &Request{
		Prefix: s.Prefix, Port: s.port, Source: s.source, Reply: s.reply,
		Remote: d.remote, Local: d.local, Received: d.at, Deadline: d.at.Add(s.Deadline),
		Body: d.data, CoAP: d.coap, RPC: d.rpc,
	}, s.subject, s.capture, s.ids, s.idSeq)
	msg.Header[schemas.HeaderShed] = shedValue
	select {
	case captures <- capture{msg, subject}:
	default:
		s.recycle(msg)
		s.stats.inFlight.Add(1)
	}
}

// shedValue is HeaderShed's value, shared by every shed request's header.
var shedValue = []string{"1"}

// rpcShed is the reply to a call shed at the door.
var rpcShed = map[string][]string{
	schemas.HeaderRPCStatus: {strconv.Itoa(int(rpcpb.Status_STATUS_RESOURCE_EXHAUSTED))},
	schemas.HeaderRPCError:  {"overloaded: retry later"},
}

// overloadHeader returns the reply headers of d's overload status: for
// CoAP 5.03 with Max-Age retry in whole seconds, rounded up, at least 1
// (as the worker SDK sheds).
func overloadHeader(d datagram, retry time.Duration) map[string][]string {
	if d.rpc != nil {
		return rpcShed
	}
	maxAge := max(int64((retry+time.Second-1)/time.Second), 1)
	return map[string][]string{
		schemas.HeaderCoAPCode:   {"5.03"},
		schemas.HeaderCoAPMaxAge: {strconv.FormatInt(maxAge, 10)},
	}
}
