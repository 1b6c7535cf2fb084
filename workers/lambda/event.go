package lambda

import (
	"encoding/base64"
	"encoding/json"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// Envelope holds the fields every native event carries: where and when the
// request was received. Schemas: schemas/lambda/*-event.schema.json.
type Envelope struct {
	// Port is the gateway port the request was sent to.
	Port uint16 `json:"Port"`
	// Remote is the client's address, ip:port ([ip6]:port); Local the
	// address the request was sent to, which the reply is sent from.
	Remote string `json:"Remote"`
	Local  string `json:"Local"`
	// ReceivedAt is when the request was received, RFC 3339 in UTC: see
	// receivedAt.
	ReceivedAt string `json:"ReceivedAt"`
	// ID is the exchange's correlation id (ce-id), opaque.
	ID string `json:"Id"`
}

// RawEvent is the native event of a request from a raw listener
// (schemas/lambda/raw-event.schema.json).
type RawEvent struct {
	// Data is the datagram, standard base64.
	Data string `json:"Data"`
	Envelope
}

// CoAPEvent is the native event of a request from a coap listener
// (schemas/lambda/coap-event.schema.json).
type CoAPEvent struct {
	// Code is the request method: GET, POST, PUT, DELETE, FETCH, PATCH or
	// iPATCH.
	Code string `json:"code"`
	// MessageID is the CoAP message id of the request, and Token its
	// token, standard base64 ("" for none), both from the datagram head
	// (udpgate-datagram-head). A request reassembled from a Block1 upload
	// came in several datagrams and has none: 0 and "".
	MessageID uint16 `json:"message_id"`
	Token     string `json:"token"`
	// Path is "/" and the Uri-Path segments joined by "/", each
	// percent-encoded (RFC 3986), as in the request line
	// (udpgate-coap-request): "/time", "/sensors/a%20b".
	Path string `json:"path"`
	// Query are the Uri-Query options, decoded, e.g. ["unit=C", "verbose"];
	// empty, not absent, if there are none.
	Query []string `json:"query"`
	// ContentFormat is the request's Content-Format and Accept the format
	// the client asks for; absent if the request has none.
	ContentFormat *int `json:"content_format,omitempty"`
	Accept        *int `json:"accept,omitempty"`
	// Payload is the request's payload, standard base64.
	Payload string `json:"payload"`
	Envelope
}

// RPCEvent is the native event of a call from an rpc listener
// (schemas/lambda/rpc-event.schema.json).
type RPCEvent struct {
	Service string `json:"service"`
	Method  string `json:"method"`
	// ID is the call's id, a uint64 in decimal: a JSON number would lose
	// precision in JavaScript. The gateway puts it in the reply itself.
	ID string `json:"id"`
	// Params is the call's params (the serialized request message),
	// standard base64.
	Params string `json:"params"`
	Envelope
}

// BatchEvent is the event of ShapeBatch
// (schemas/lambda/batch-event.schema.json).
type BatchEvent struct {
	Messages []BatchMessage `json:"Messages"`
}

// BatchMessage is one request in a BatchEvent.
type BatchMessage struct {
	// Tag names the message within its batch; a reply names it back.
	// Opaque (today the message's index in decimal).
	Tag        string `json:"Tag"`
	Remote     string `json:"Remote"`
	Local      string `json:"Local"`
	ReceivedAt string `json:"ReceivedAt"`
	// Data is the datagram (CoAP: the payload; RPC: the params), standard
	// base64.
	Data string `json:"Data"`
}

// BatchResult is what a function returns in ShapeBatch
// (schemas/lambda/batch-result.schema.json); null means no replies.
type BatchResult struct {
	Replies []BatchReply `json:"Replies"`
}

// BatchReply is the reply to the message with Tag: Data, standard base64,
// is the body; a null Data means no reply.
type BatchReply struct {
	Tag  string  `json:"Tag"`
	Data *string `json:"Data"`
}

func envelope(r *workers.Request, received time.Time) Envelope {
	return Envelope{
		Port: r.Port, Remote: addr(r.Remote), Local: addr(r.Local), ID: r.ID,
		ReceivedAt: received.UTC().Format(time.RFC3339Nano),
	}
}

// receivedAt returns when r was received: r.Received if the SDK knows it
// (an imported request's ce-time, the packet's time; for a durable group
// when the capture stream stored the request), else now, when the bridge
// takes the request: a direct group receives it as the gateway reads it.
func receivedAt(r *workers.Request) time.Time {
	if !r.Received.IsZero() {
		return r.Received
	}
	return time.Now()
}

// coapPath returns the path of r as its request line spells it: "/" and
// the Uri-Path segments, each percent-encoded.
func coapPath(r *workers.Request) string {
	_, uri, _ := strings.Cut(r.Header.Get(schemas.HeaderCoAPRequest), " ")
	if path, _, _ := strings.Cut(uri, "?"); strings.HasPrefix(path, "/") {
		return path
	}
	segs := make([]string, len(r.CoAP.Segments))
	for i, s := range r.CoAP.Segments {
		segs[i] = url.PathEscape(s)
	}
	return "/" + strings.Join(segs, "/")
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

var b64 = base64.StdEncoding

// nativeEvent returns the JSON event of r, received at received, for
// ShapeNative.
func nativeEvent(r *workers.Request, received time.Time) ([]byte, error) {
	switch {
	case r.CoAP != nil:
		c := r.CoAP
		ev := CoAPEvent{
			Code:      c.Method,
			MessageID: c.MessageID,
			Token:     b64.EncodeToString(c.Token),
			Path:      coapPath(r),
			Query:     c.Query,
			Payload:   b64.EncodeToString(r.Body),
			Envelope:  envelope(r, received),
		}
		if ev.Query == nil {
			ev.Query = []string{}
		}
		if c.ContentFormat >= 0 {
			ev.ContentFormat = &c.ContentFormat
		}
		if c.Accept >= 0 {
			ev.Accept = &c.Accept
		}
		return json.Marshal(ev)
	case r.RPC != nil:
		return json.Marshal(RPCEvent{
			Service:  r.RPC.Service,
			Method:   r.RPC.Method,
			ID:       strconv.FormatUint(r.RPC.ID, 10),
			Params:   b64.EncodeToString(r.Body),
			Envelope: envelope(r, received),
		})
	}
	return json.Marshal(RawEvent{Data: b64.EncodeToString(r.Body), Envelope: envelope(r, received)})
}

// batchMessage returns r, received at received, as message tag of a
// BatchEvent.
func batchMessage(tag string, r *workers.Request, received time.Time) BatchMessage {
	e := envelope(r, received)
	return BatchMessage{Tag: tag, Remote: e.Remote, Local: e.Local, ReceivedAt: e.ReceivedAt, Data: b64.EncodeToString(r.Body)}
}
