package bench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/url"
	"strings"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapcoder "github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// codec builds the requests of one target and recognises their replies.
// A codec is shared by every socket of a run and must be safe for
// concurrent use; per-socket state (CoAP message ids) lives in the socket.
type codec interface {
	// request appends the request with correlation id id, sent as the
	// socket's n-th request (from a random start, modulo 2^16), to buf.
	request(buf []byte, id uint64, n int) []byte
	// reply reads a datagram from the target. It returns the id of the
	// request it answers (ok false if it names none), whether the answer
	// is an error (a CoAP 4.xx or 5.xx, an RPC status other than OK), and
	// an acknowledgement to send back, if the reply asks for one (a CoAP
	// separate response, CON).
	reply(b []byte, ack []byte) (id uint64, ok, failed bool, out []byte)
	// perSocket is how many requests one socket may send before it must
	// be replaced (0: no limit).
	perSocket() int
}

// rawCodec sends the payload after an 8-byte big-endian request id. A
// reply whose first 8 bytes are an outstanding id answers that request, as
// an echo does; a reply that names no outstanding request answers the
// socket's only one, if it has exactly one in flight (the built-in time
// worker does not echo).
type rawCodec struct{ payload []byte }

func (c rawCodec) request(buf []byte, id uint64, _ int) []byte {
	buf = binary.BigEndian.AppendUint64(buf, id)
	return append(buf, c.payload...)
}

func (rawCodec) reply(b, _ []byte) (uint64, bool, bool, []byte) {
	if len(b) < 8 {
		return 0, true, false, nil // ids start at 1: only the fallback can match
	}
	return binary.BigEndian.Uint64(b), true, false, nil
}

func (rawCodec) perSocket() int { return 0 }

// rpcCodec sends rpcpb.Call envelopes whose Id is the request id.
type rpcCodec struct {
	service, method string
	params          []byte // the Call's params, encoded once
}

func newRPCCodec(service, method string, payload []byte) (*rpcCodec, error) {
	c := &rpcCodec{service: service, method: method, params: payload}
	if m, ok := client.LookupMethod(service, method); ok {
		msg := m.Request.New().Interface()
		if len(bytes.TrimSpace(payload)) > 0 {
			if err := protojson.Unmarshal(payload, msg); err != nil {
				return nil, fmt.Errorf("bench: params for %s/%s: %w", service, method, err)
			}
		}
		var err error
		if c.params, err = proto.Marshal(msg); err != nil {
			return nil, fmt.Errorf("bench: params for %s/%s: %w", service, method, err)
		}
	}
	return c, nil
}

func (c *rpcCodec) request(buf []byte, id uint64, _ int) []byte {
	b, err := proto.MarshalOptions{}.MarshalAppend(buf, &rpcpb.Call{Id: id, Service: c.service, Method: c.method, Params: c.params})
	if err != nil { // cannot happen for these fields
		panic(err)
	}
	return b
}

func (*rpcCodec) reply(b, _ []byte) (uint64, bool, bool, []byte) {
	var r rpcpb.Reply
	if proto.Unmarshal(b, &r) != nil {
		return 0, false, false, nil
	}
	return r.Id, true, r.Status != rpcpb.Status_STATUS_OK, nil
}

func (*rpcCodec) perSocket() int { return 0 }

// coapCodec sends confirmable CoAP requests whose 8-byte token is the
// request id and whose message id is the socket's request number plus a
// random start (so that a new socket that gets the port of a closed one
// does not repeat its ids): a socket never reuses a message id, and is
// replaced after 65,536 requests (RFC 7252 forbids reusing one within
// EXCHANGE_LIFETIME, 247 s). It does not
// retransmit: a request unanswered within the timeout is lost.
type coapCodec struct {
	template []byte // the encoded request with message id 0 and a zero token
}

const coapTokenLen = 8

func newCoAPCodec(method, path string, queries []string, payload []byte) (*coapCodec, error) {
	code, ok := map[string]codes.Code{
		"get": codes.GET, "post": codes.POST, "put": codes.PUT, "delete": codes.DELETE,
		"fetch": codes.FETCH, "patch": codes.PATCH, "ipatch": codes.IPATCH, "": codes.GET,
	}[strings.ToLower(method)]
	if !ok {
		return nil, fmt.Errorf("bench: unknown CoAP method %q", method)
	}
	buf := make([]byte, 1024)
	opts := make(message.Options, 0, 16)
	opts, _, err := opts.SetPath(buf, path)
	if err != nil {
		return nil, fmt.Errorf("bench: coap path %q: %w", path, err)
	}
	for _, q := range queries {
		opts = opts.Add(message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	m := message.Message{
		Token:     make([]byte, coapTokenLen),
		Options:   opts,
		Code:      code,
		Payload:   payload,
		MessageID: 0,
		Type:      message.Confirmable,
	}
	size, err := coapcoder.DefaultCoder.Size(m)
	if err != nil {
		return nil, fmt.Errorf("bench: coap request: %w", err)
	}
	t := make([]byte, size)
	if _, err := coapcoder.DefaultCoder.Encode(m, t); err != nil {
		return nil, fmt.Errorf("bench: coap request: %w", err)
	}
	return &coapCodec{template: t}, nil
}

func (c *coapCodec) request(buf []byte, id uint64, n int) []byte {
	start := len(buf)
	buf = append(buf, c.template...)
	binary.BigEndian.PutUint16(buf[start+2:], uint16(n))
	binary.BigEndian.PutUint64(buf[start+4:], id)
	return buf
}

// CoAP message types.
const (
	coapCON = 0
	coapNON = 1
	coapACK = 2
	coapRST = 3
)

func (*coapCodec) reply(b, ack []byte) (uint64, bool, bool, []byte) {
	if len(b) < 4 || b[0]>>6 != 1 {
		return 0, false, false, nil
	}
	typ, tkl, code := b[0]>>4&3, int(b[0]&0xf), b[1]
	if typ == coapCON { // a separate response: acknowledge it
		ack = append(ack[:0], 1<<6|coapACK<<4, 0, b[2], b[3])
	} else {
		ack = nil
	}
	if code == 0 || tkl != coapTokenLen || len(b) < 4+tkl {
		// An empty ACK (the response follows separately), a RST, or not
		// ours.
		return 0, false, false, ack
	}
	return binary.BigEndian.Uint64(b[4:]), true, code>>5 >= 4, ack
}

func (*coapCodec) perSocket() int { return 1 << 16 }

// target is a parsed bench URL.
type target struct {
	scheme string
	host   string
	codec  codec
	ws     string // ws and wss: the listener's WebSocket URL
}

// parseTarget parses udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY],
// rpc://HOST:PORT/SERVICE/METHOD or ws://HOST:PORT[/PATH]/SERVICE/METHOD
// (wss:// too), as `udpgate send` does, and builds its codec. A ws target
// sends the Calls of an rpc one, in binary messages.
func parseTarget(raw, method string, payload []byte) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("bench: %w", err)
	}
	t := target{scheme: u.Scheme, host: u.Host}
	port := u.Port()
	switch u.Scheme {
	case "udp":
		if port == "" || (u.Path != "" && u.Path != "/") {
			return t, fmt.Errorf("bench: %q: want udp://HOST:PORT", raw)
		}
		t.codec = rawCodec{payload: payload}
	case "rpc":
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if port == "" || len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return t, fmt.Errorf("bench: %q: want rpc://HOST:PORT/SERVICE/METHOD", raw)
		}
		if t.codec, err = newRPCCodec(parts[0], parts[1], payload); err != nil {
			return t, err
		}
	case "ws", "wss":
		wt, err := client.ParseWS(raw)
		if err != nil {
			return t, fmt.Errorf("bench: %w", err)
		}
		t.ws = wt.URL
		if t.codec, err = newRPCCodec(wt.Service, wt.Method, payload); err != nil {
			return t, err
		}
	case "coap":
		if port == "" {
			t.host = u.Host + ":5683"
			if strings.Contains(u.Hostname(), ":") {
				t.host = "[" + u.Hostname() + "]:5683"
			}
		}
		path := u.Path
		if path == "" {
			path = "/"
		}
		var queries []string
		if u.RawQuery != "" {
			for q := range strings.SplitSeq(u.RawQuery, "&") {
				if q, err = url.QueryUnescape(q); err != nil {
					return t, fmt.Errorf("bench: %q: query: %w", raw, err)
				}
				queries = append(queries, q)
			}
		}
		if t.codec, err = newCoAPCodec(method, path, queries, payload); err != nil {
			return t, err
		}
	default:
		return t, fmt.Errorf("bench: %q: want udp://HOST:PORT, coap://HOST[:PORT]/PATH, rpc://HOST:PORT/SERVICE/METHOD or ws://HOST:PORT[/PATH]/SERVICE/METHOD", raw)
	}
	return t, nil
}
