package ingress

import (
	"encoding/base64"
	"net/netip"
	"strconv"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// Request is what a request message is made of: the datagram, where it
// came from and went to, and the listener's names.
type Request struct {
	Prefix string         // subject prefix
	Port   uint16         // listener port
	Source string         // ce-source, schemas.Source
	Reply  string         // the receiving node's reply subject, schemas.ReplySubject; the request's own is Reply.ID
	ID     string         // correlation id
	Remote netip.AddrPort // client
	Local  netip.AddrPort // where the client sent the datagram
	// Received is when the datagram was read. It is on the wire (ce-time)
	// only if KeepTime is set: the capture stream's own timestamp says
	// when a live request arrived.
	Received time.Time
	KeepTime bool
	Deadline time.Time
	Body     []byte        // the datagram; for CoAP the payload, for RPC the params
	CoAP     *coap.Request // a CoAP request, or nil
	RPC      *rpc.Call     // an RPC call, or nil
	// Identity is the authenticated identity of the client of a DTLS
	// listener (schemas.HeaderDTLSIdentity), or empty.
	Identity string
	// Group is the multicast group (schemas.HeaderMulticast) or the
	// broadcast address (schemas.HeaderBroadcast) the datagram was sent
	// to, Local's address; the zero Addr for a datagram sent to the node.
	Group netip.Addr
}

// Message returns the request message the gateway publishes for r (the
// subject, reply subject and headers of the wire contract,
// schemas/README.md) and the subject its capture copy is published to.
// pcap import builds its messages with it too, so imported traffic is
// indistinguishable from live traffic. The message's Data is r.Body, not a
// copy.
func Message(r Request) (msg *nats.Msg, capture string) {
	return newMessage(nil, &r, "", "", nil, 0)
}

// Header counts of request messages: every message's, and what each
// protocol adds at most.
const (
	rawHeaders  = 8 // ce-specversion, ce-id, ce-source, ce-type, remote, local, deadline, reply
	coapHeaders = 5 // request line, content-format, accept, datagram head, observe
	rpcHeaders  = 4 // service, method, id, the WebSocket connection
)

// The values newMessage computes, all kept in one string.
const (
	valSubject = iota
	valCapture
	valReply // the request's reply subject, which ends with its id
	valTime
	valRemote
	valLocal
	valDeadline
	valRequestLine
	valContentFormat
	valAccept
	valHead
	valRPCID
	valGroup
	numVals
)

// newMessage builds the request message of r, as Message does, in msg if
// it is not nil: a message to reuse, whose Header is empty or nil. Besides
// the Msg and its header map, it allocates twice whatever the protocol:
// one array for every header's value slice, and one string that holds
// every value computed here. subject and capture, if not empty, are r's
// request and capture subjects, computed once by the caller (a raw
// listener's are constant). If table is not nil the correlation id is
// table's id of seq, and r.ID is not used.
func newMessage(msg *nats.Msg, r *Request, subject, capture string, table *exchange.Table, seq uint64) (*nats.Msg, string) {
	n := rawHeaders
	switch {
	case r.CoAP != nil:
		n += coapHeaders
	case r.RPC != nil:
		n += rpcHeaders
	}
	if r.KeepTime {
		n++
	}
	if r.Identity != "" {
		n++
	}
	if r.Group.IsValid() {
		n++
	}

	// Every computed value is appended to b; span records where each is.
	var span [numVals][2]int
	b := make([]byte, 0, valuesSize(r, subject, table))
	mark := func(v, start int) { span[v] = [2]int{start, len(b)} }
	if subject == "" {
		start := len(b)
		switch c := r.CoAP; {
		case c != nil:
			b = schemas.AppendCoAPSubject(b, r.Prefix, r.Port, c.Method, c.Segments)
		case r.RPC != nil:
			b = schemas.AppendRPCSubject(b, r.Prefix, r.Port, r.RPC.Service, r.RPC.Method)
		default:
			b = schemas.AppendInSubject(b, r.Prefix, r.Port)
		}
		mark(valSubject, start)
		start = len(b)
		b = schemas.AppendCaptureSubject(b, r.Prefix, unsafe.String(unsafe.SliceData(b[span[valSubject][0]:]), span[valSubject][1]-span[valSubject][0]))
		mark(valCapture, start)
	}
	start := len(b)
	b = append(b, r.Reply...)
	b = append(b, '.')
	idStart := len(b)
	if table != nil {
		b = table.AppendID(b, seq)
	} else {
		b = append(b, r.ID...)
	}
	mark(valReply, start)
	if r.KeepTime {
		start = len(b)
		b = r.Received.UTC().AppendFormat(b, time.RFC3339Nano)
		mark(valTime, start)
	}
	start = len(b)
	b = r.Remote.AppendTo(b)
	mark(valRemote, start)
	start = len(b)
	b = r.Local.AppendTo(b)
	mark(valLocal, start)
	start = len(b)
	b = strconv.AppendInt(b, r.Deadline.UnixMilli(), 10)
	mark(valDeadline, start)
	if c := r.CoAP; c != nil {
		if c.RequestLine == "" {
			start = len(b)
			b = append(b, c.Method...)
			b = append(b, ' ')
			b = append(b, c.Path...)
			if c.Query != "" {
				b = append(b, '?')
				b = append(b, c.Query...)
			}
			mark(valRequestLine, start)
		}
		if c.ContentFormat >= 0 {
			start = len(b)
			b = strconv.AppendInt(b, int64(c.ContentFormat), 10)
			mark(valContentFormat, start)
		}
		if c.Accept >= 0 {
			start = len(b)
			b = strconv.AppendInt(b, int64(c.Accept), 10)
			mark(valAccept, start)
		}
		if c.Head != nil {
			start = len(b)
			b = base64.StdEncoding.AppendEncode(b, c.Head)
			mark(valHead, start)
		}
	}
	if r.RPC != nil {
		start = len(b)
		b = strconv.AppendUint(b, r.RPC.ID, 10)
		mark(valRPCID, start)
	}
	if r.Group.IsValid() {
		start = len(b)
		b = r.Group.AppendTo(b)
		mark(valGroup, start)
	}
	// b is never written again: its bytes are the string's.
	all := unsafe.String(unsafe.SliceData(b), len(b))
	val := func(v int) string { return all[span[v][0]:span[v][1]] }

	if subject == "" {
		subject, capture = val(valSubject), val(valCapture)
	}
	reply := val(valReply)
	id := all[idStart:span[valReply][1]]
	if msg == nil {
		msg = &nats.Msg{}
	}
	if msg.Header == nil {
		msg.Header = make(nats.Header, n)
	}
	h := headers{h: msg.Header, vals: make([]string, 0, n)}
	h.set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	h.set(schemas.HeaderID, id)
	h.set(schemas.HeaderSource, r.Source)
	if r.KeepTime {
		h.set(schemas.HeaderTime, val(valTime))
	}
	h.set(schemas.HeaderRemote, val(valRemote))
	h.set(schemas.HeaderLocal, val(valLocal))
	h.set(schemas.HeaderDeadline, val(valDeadline))
	h.set(schemas.HeaderReply, reply)
	if r.Identity != "" {
		h.set(schemas.HeaderDTLSIdentity, r.Identity)
	}
	switch {
	case r.Group.IsMulticast():
		h.set(schemas.HeaderMulticast, val(valGroup))
	case r.Group.IsValid():
		h.set(schemas.HeaderBroadcast, val(valGroup))
	}
	switch c := r.CoAP; {
	case c != nil:
		h.set(schemas.HeaderType, schemas.TypeCoAP)
		if c.RequestLine != "" {
			h.set(schemas.HeaderCoAPRequest, c.RequestLine)
		} else {
			h.set(schemas.HeaderCoAPRequest, val(valRequestLine))
		}
		if c.ContentFormat >= 0 {
			h.set(schemas.HeaderCoAPContentFormat, val(valContentFormat))
		}
		if c.Accept >= 0 {
			h.set(schemas.HeaderCoAPAccept, val(valAccept))
		}
		if c.Head != nil {
			h.set(schemas.HeaderDatagramHead, val(valHead))
		}
		if c.Observe != "" {
			h.set(schemas.HeaderCoAPObserve, c.Observe)
		}
	case r.RPC != nil:
		h.set(schemas.HeaderType, schemas.TypeRPC)
		h.set(schemas.HeaderRPCService, r.RPC.Service)
		h.set(schemas.HeaderRPCMethod, r.RPC.Method)
		h.set(schemas.HeaderRPCID, val(valRPCID))
		if r.RPC.Connection != "" {
			h.set(schemas.HeaderWSConnection, r.RPC.Connection)
		}
	default:
		h.set(schemas.HeaderType, schemas.TypeRaw)
	}
	msg.Subject, msg.Reply, msg.Data = subject, reply, r.Body
	return msg, capture
}

// headers fills a header map whose value slices share one array.
type headers struct {
	h    nats.Header
	vals []string
}

// set sets key to the single value v. The value slice has no spare
// capacity, so an Add to it later copies it rather than overwriting the
// next header's value.
func (h *headers) set(key, v string) {
	h.vals = append(h.vals, v)
	n := len(h.vals)
	h.h[key] = h.vals[n-1 : n : n]
}

// valuesSize is the room newMessage needs for its computed values; a
// guess too small costs a copy, not correctness.
func valuesSize(r *Request, subject string, table *exchange.Table) int {
	const (
		timeLen     = len("2006-01-02T15:04:05.999999999Z")
		int64Len    = 20
		idLen       = 12 + 1 + 16 // exchange ids: 48 random bits in hex, '-', seq in hex
		inSubjectEx = len(".in.65535.")
	)
	n := len(r.Reply) + 1 + len(r.ID) + addrLen(r.Remote) + addrLen(r.Local) + int64Len
	if r.Group.IsValid() {
		n += addrLen(r.Local)
	}
	if r.KeepTime {
		n += timeLen
	}
	if table != nil {
		n += idLen
	}
	subj := 0
	if subject == "" {
		subj = len(r.Prefix) + inSubjectEx
	}
	switch c := r.CoAP; {
	case c != nil:
		n += len(c.Method) + 2 + len(c.Path) + len(c.Query) + 2*int64Len + base64.StdEncoding.EncodedLen(len(c.Head))
		if subject != "" {
			break
		}
		subj += len(c.Method)
		for _, s := range c.Segments {
			subj += 1 + schemas.EscapedLen(s)
		}
	case r.RPC != nil:
		n += int64Len
		if subject == "" {
			subj += 1 + schemas.EscapedLen(r.RPC.Service) + 1 + schemas.EscapedLen(r.RPC.Method)
		}
	}
	// The capture subject is the request subject with "capture" for "in".
	return n + 2*subj + len(".capture")
}

// addrLen is the longest ap.AppendTo can make for ap's kind of address.
func addrLen(ap netip.AddrPort) int {
	if ap.Addr().Is4() {
		return len("255.255.255.255:65535")
	}
	return len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%]:65535") + len(ap.Addr().Zone())
}
