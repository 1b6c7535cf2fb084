package ingress

import (
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"strconv"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// Request is what a request message is made of: the datagram, where it
// came from and went to, and the listener's names.
type Request struct {
	Prefix   string         // subject prefix
	Port     uint16         // listener port
	Listener string         // PORT/PROTOCOL
	Source   string         // ce-source, schemas.Source
	Reply    string         // the reply subject of the receiving node
	ID       string         // correlation id
	Remote   netip.AddrPort // client
	Local    netip.AddrPort // where the client sent the datagram
	Received time.Time
	Deadline time.Time
	Body     []byte        // the datagram; for CoAP the payload, for RPC the params
	CoAP     *coap.Request // a CoAP request, or nil
	RPC      *rpc.Call     // an RPC call, or nil
}

// Message returns the request message the gateway publishes for r: the
// subject and headers of the wire contract (schemas/README.md). pcap
// import builds its messages with it too, so imported traffic is
// indistinguishable from live traffic. The message's Data is r.Body, not a
// copy.
func Message(r Request) *nats.Msg {
	return newMessage(nil, &r, "", nil, 0)
}

// Header counts of request messages: every message's, and what each
// protocol adds (its own ce-type replaces the raw one).
const (
	rawHeaders  = 11
	coapHeaders = 10 // method, path, query, content-format, accept, token, type, mid, datagram head, Nats-Msg-Id
	rpcHeaders  = 3  // service, method, id
)

// The values newMessage computes, all kept in one string.
const (
	valSubject = iota
	valID
	valTime
	valRemote
	valLocal
	valDeadline
	valToken
	valMID
	valContentFormat
	valAccept
	valHead
	valRPCID
	numVals
)

// newMessage builds the request message of r, as Message does, in msg if
// it is not nil: a message to reuse, whose Header is empty or nil. Besides
// the Msg and its header map (which takes four allocations when it has more
// than eight entries), it allocates twice whatever the protocol: one array
// for every header's value slice, and one string that holds every value
// computed here. subject, if not empty, is r's subject, computed once by
// the caller (a raw listener's is constant). If table is not nil the
// correlation id is table's id of seq, and r.ID is not used.
func newMessage(msg *nats.Msg, r *Request, subject string, table *exchange.Table, seq uint64) *nats.Msg {
	n := rawHeaders
	switch {
	case r.CoAP != nil:
		n += coapHeaders
	case r.RPC != nil:
		n += rpcHeaders
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
	}
	if table != nil {
		start := len(b)
		b = table.AppendID(b, seq)
		mark(valID, start)
	}
	start := len(b)
	b = r.Received.UTC().AppendFormat(b, time.RFC3339Nano)
	mark(valTime, start)
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
		start = len(b)
		b = hex.AppendEncode(b, c.Token)
		mark(valToken, start)
		start = len(b)
		b = strconv.AppendUint(b, uint64(c.MessageID), 10)
		mark(valMID, start)
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
	// b is never written again: its bytes are the string's.
	all := unsafe.String(unsafe.SliceData(b), len(b))
	val := func(v int) string { return all[span[v][0]:span[v][1]] }

	if subject == "" {
		subject = val(valSubject)
	}
	id := r.ID
	if table != nil {
		id = val(valID)
	}
	if msg == nil {
		msg = &nats.Msg{}
	}
	if msg.Header == nil {
		msg.Header = make(nats.Header, n)
	}
	h := headers{h: msg.Header, vals: make([]string, 0, n)}
	h.set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	h.set(schemas.HeaderCEID, id)
	h.set(schemas.HeaderSource, r.Source)
	h.set(schemas.HeaderTime, val(valTime))
	h.set(schemas.HeaderID, id)
	h.set(schemas.HeaderRemote, val(valRemote))
	h.set(schemas.HeaderLocal, val(valLocal))
	h.set(schemas.HeaderListener, r.Listener)
	h.set(schemas.HeaderDeadline, val(valDeadline))
	h.set(schemas.HeaderReply, r.Reply)
	switch c := r.CoAP; {
	case c != nil:
		h.set(schemas.HeaderType, schemas.TypeCoAP)
		h.set(schemas.HeaderCoAPMethod, c.Method)
		h.set(schemas.HeaderCoAPPath, c.Path)
		if c.Query != "" {
			h.set(schemas.HeaderCoAPQuery, c.Query)
		}
		if c.ContentFormat >= 0 {
			h.set(schemas.HeaderCoAPContentFormat, val(valContentFormat))
		}
		if c.Accept >= 0 {
			h.set(schemas.HeaderCoAPAccept, val(valAccept))
		}
		h.set(schemas.HeaderCoAPToken, val(valToken))
		typ := "NON"
		if c.Confirmable {
			typ = "CON"
		}
		h.set(schemas.HeaderCoAPType, typ)
		h.set(schemas.HeaderCoAPMessageID, val(valMID))
		if c.Head != nil {
			h.set(schemas.HeaderDatagramHead, val(valHead))
		}
		// A retransmission that reaches the stream again (after a gateway
		// restart, or through another node) is dropped by JetStream.
		h.set(jetstream.MsgIDHeader, c.MsgID)
	case r.RPC != nil:
		h.set(schemas.HeaderType, schemas.TypeRPC)
		h.set(schemas.HeaderRPCService, r.RPC.Service)
		h.set(schemas.HeaderRPCMethod, r.RPC.Method)
		h.set(schemas.HeaderRPCID, val(valRPCID))
	default:
		h.set(schemas.HeaderType, schemas.TypeRaw)
	}
	msg.Subject, msg.Data = subject, r.Body
	return msg
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
	n := timeLen + addrLen(r.Remote) + addrLen(r.Local) + int64Len
	if table != nil {
		n += idLen
	}
	if subject == "" {
		n += len(r.Prefix) + inSubjectEx
	}
	switch c := r.CoAP; {
	case c != nil:
		n += 2*len(c.Token) + 3*int64Len + base64.StdEncoding.EncodedLen(len(c.Head))
		if subject == "" {
			n += len(c.Method)
			for _, s := range c.Segments {
				n += 1 + schemas.EscapedLen(s)
			}
		}
	case r.RPC != nil:
		n += int64Len
		if subject == "" {
			n += 1 + schemas.EscapedLen(r.RPC.Service) + 1 + schemas.EscapedLen(r.RPC.Method)
		}
	}
	return n
}

// addrLen is the longest ap.AppendTo can make for ap's kind of address.
func addrLen(ap netip.AddrPort) int {
	if ap.Addr().Is4() {
		return len("255.255.255.255:65535")
	}
	return len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%]:65535") + len(ap.Addr().Zone())
}
