package pcap

import (
	"bufio"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// Exporter writes a window of the capture stream as a pcap file. Set its
// fields, then call Export.
type Exporter struct {
	// JetStream reads the streams. Required.
	JetStream jetstream.JetStream
	// Stream is the capture stream (schemas.StreamIn if empty).
	Stream string
	// Prefix is the subject prefix (schemas.DefaultPrefix if empty).
	Prefix string
	// Ports selects the listener ports to export; empty exports all.
	Ports []uint16
	// Since and Until bound the window by each request's time (its ce-time
	// if it has one, else when the stream stored it), both inclusive; zero
	// leaves that end open. Reading starts at the first message stored at
	// or after Since and ends with the last message stored when Export
	// started.
	Since, Until time.Time
	// RepliesStream, when set, is the stream of recorded replies
	// (schemas.StreamReplies): each request's reply (the reply whose
	// subject's last token is the request's ce-id) is written too, from the
	// request's local address to its remote one, at the reply's stream
	// time.
	RepliesStream string
}

// ExportStats counts what Export wrote and left out.
type ExportStats struct {
	Requests uint64 // request datagrams written
	Replies  uint64 // reply datagrams written
	// Outside counts requests read whose time is outside the window.
	Outside uint64
	// Undecodable counts messages whose datagram or addresses could not be
	// rebuilt from their headers (not written).
	Undecodable uint64
	// Unmatched counts recorded replies without an exported request (its
	// request outside the window or on another port, or a second reply).
	Unmatched uint64
	// NotSent counts replies the gateway would not have sent: after the
	// request's deadline, or a raw listener's error status.
	NotSent uint64
	// WS counts messages in the window from ws listeners (ce-source
	// udpgate://NODE/PORT/ws): WebSocket calls and connection events,
	// which were no datagrams (not written). WSReplies counts the
	// recorded replies to those calls (not written either).
	WS, WSReplies uint64
}

// Ethernet addresses of the frames: locally administered, one for the
// clients' side and one for the gateway's.
var (
	clientMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	gatewayMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// snaplen of the pcap files written: room for any datagram.
const snaplen = 262144

// Export writes the window to w as a pcap file (Ethernet link type,
// nanosecond timestamps), requests and replies in time order.
func (ex *Exporter) Export(ctx context.Context, w io.Writer) (ExportStats, error) {
	var st ExportStats
	if ex.JetStream == nil {
		return st, errors.New("pcap: export: JetStream is required")
	}
	prefix := cmp.Or(ex.Prefix, schemas.DefaultPrefix)
	filters := []string{schemas.InWildcard(prefix)}
	if len(ex.Ports) > 0 {
		filters = filters[:0]
		for _, p := range ex.Ports {
			s := schemas.InSubject(prefix, p)
			filters = append(filters, s, s+".>")
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs, err := openCursor(ctx, ex.JetStream, cmp.Or(ex.Stream, schemas.StreamIn), filters, ex.Since)
	if err != nil {
		return st, err
	}
	defer reqs.stop()
	var reps *cursor
	if ex.RepliesStream != "" {
		if reps, err = openCursor(ctx, ex.JetStream, ex.RepliesStream, []string{schemas.ReplyWildcard(prefix)}, ex.Since); err != nil {
			return st, err
		}
		defer reps.stop()
	}

	bw := bufio.NewWriterSize(w, 1<<16)
	fw := &frameWriter{w: pcapgo.NewWriterNanos(bw), buf: gopacket.NewSerializeBuffer()}
	if err := fw.w.WriteFileHeader(snaplen, layers.LinkTypeEthernet); err != nil {
		return st, fmt.Errorf("pcap: export: write: %w", err)
	}
	st, err = ex.copy(ctx, fw, reqs, reps)
	if ferr := bw.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("pcap: export: write: %w", ferr)
	}
	return st, err
}

// copy merges the requests and replies in time order into fw.
func (ex *Exporter) copy(ctx context.Context, fw *frameWriter, reqs, reps *cursor) (ExportStats, error) {
	var st ExportStats
	pending := map[string]*request{} // exported requests awaiting their reply
	var order []*request             // pending's requests in time order, for expiry
	// Replies read before their request, by its id: a direct worker can
	// answer a request before the capture stores its copy, so the reply's
	// stream time can come first. Each waits until the requests' times
	// are earlyMargin past it.
	early := map[string]*earlyReply{}
	var earlyOrder []*earlyReply // early's replies in time order, for expiry

	var req *request
	var rep jetstream.Msg
	nextReq := func() error {
		for {
			m, err := reqs.next(ctx)
			if m == nil || err != nil {
				req = nil
				return err
			}
			r, err := parseRequest(m)
			if err != nil {
				st.Undecodable++
				continue
			}
			if (!ex.Since.IsZero() && r.at.Before(ex.Since)) || (!ex.Until.IsZero() && r.at.After(ex.Until)) {
				st.Outside++
				continue
			}
			if r.protocol == schemas.ProtocolWS {
				// Not UDP: counted, and its reply known as a ws one.
				st.WS++
				if e := early[r.id]; e != nil {
					delete(early, r.id)
					st.WSReplies++
				} else if reps != nil && r.id != "" {
					pending[r.id] = r
					order = append(order, r)
				}
				continue
			}
			req = r
			return nil
		}
	}
	nextRep := func() (err error) {
		rep = nil
		if reps != nil {
			rep, err = reps.next(ctx)
		}
		return err
	}
	if err := nextReq(); err != nil {
		return st, err
	}
	if err := nextRep(); err != nil {
		return st, err
	}
	for req != nil || rep != nil {
		var repAt time.Time
		if rep != nil {
			md, err := rep.Metadata()
			if err != nil {
				return st, fmt.Errorf("pcap: export: reply metadata: %w", err)
			}
			repAt = md.Timestamp
		}
		if req != nil && (rep == nil || !req.at.After(repAt)) {
			// Replies too far behind the requests have none coming.
			for len(earlyOrder) > 0 && earlyOrder[0].at.Before(req.at.Add(-earlyMargin)) {
				if e := earlyOrder[0]; early[e.id] == e {
					delete(early, e.id)
					st.Unmatched++
				}
				earlyOrder[0] = nil
				earlyOrder = earlyOrder[1:]
			}
			if err := fw.write(req.at, req.remote, req.local, clientMAC, gatewayMAC, req.datagram); err != nil {
				if !errors.Is(err, errAddress) {
					return st, err
				}
				st.Undecodable++
			} else {
				st.Requests++
				if e := early[req.id]; e != nil {
					// Written just after its request, not before it.
					delete(early, req.id)
					if err := writeReply(fw, &st, req, e.msg, e.at, req.at); err != nil {
						return st, err
					}
				} else if reps != nil {
					pending[req.id] = req
					order = append(order, req)
				}
			}
			if err := nextReq(); err != nil {
				return st, err
			}
			continue
		}
		// Forget requests whose deadline passed: a later reply is not sent.
		for len(order) > 0 && order[0].deadline.Before(repAt) {
			delete(pending, order[0].id)
			order[0] = nil
			order = order[1:]
		}
		id, _ := schemas.ReplyID(rep.Subject())
		r := pending[id]
		switch {
		case r == nil && early[id] == nil:
			e := &earlyReply{id: id, at: repAt, msg: rep}
			early[id] = e
			earlyOrder = append(earlyOrder, e)
		case r == nil:
			st.Unmatched++ // a second reply
		case r.protocol == schemas.ProtocolWS:
			delete(pending, id)
			st.WSReplies++
		default:
			delete(pending, id)
			if err := writeReply(fw, &st, r, rep, repAt, repAt); err != nil {
				return st, err
			}
		}
		if err := nextRep(); err != nil {
			return st, err
		}
	}
	st.Unmatched += uint64(len(early))
	return st, nil
}

// earlyMargin is how long a reply read before its request waits for it:
// a live request's capture copy is stored at most its deadline after the
// gateway read it, and its reply after that read (DefaultDeadline, the
// gateway's default deadline, is the margin).
const earlyMargin = DefaultDeadline

// earlyReply is a reply read before its request.
type earlyReply struct {
	id  string
	at  time.Time // the reply's stream time
	msg jetstream.Msg
}

// writeReply writes the datagram the gateway sent for m, the reply to r
// recorded at recorded, at time at, and counts it; or counts why not.
func writeReply(fw *frameWriter, st *ExportStats, r *request, m jetstream.Msg, recorded, at time.Time) error {
	if recorded.After(r.deadline) {
		st.NotSent++
		return nil
	}
	b, ok := r.reply(m.Headers(), m.Data())
	if !ok {
		st.NotSent++
		return nil
	}
	if err := fw.write(at, r.local, r.remote, gatewayMAC, clientMAC, b); err != nil {
		if !errors.Is(err, errAddress) {
			return err
		}
		st.Undecodable++
		return nil
	}
	st.Replies++
	return nil
}

// cursor reads one stream in order, from a start time to the last message
// stored when it was opened, with an ordered ephemeral consumer.
type cursor struct {
	msgs jetstream.MessagesContext
	left uint64 // messages that matched when the consumer was created
}

func openCursor(ctx context.Context, js jetstream.JetStream, stream string, filters []string, since time.Time) (*cursor, error) {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: filters, DeliverPolicy: jetstream.DeliverAllPolicy}
	if !since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("pcap: export: stream %s: %w", stream, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("pcap: export: stream %s: %w", stream, err)
	}
	c := &cursor{msgs: msgs}
	if info := cons.CachedInfo(); info != nil {
		c.left = info.NumPending
	}
	return c, nil
}

// next returns the next message, or nil after the last.
func (c *cursor) next(ctx context.Context) (jetstream.Msg, error) {
	if c.left == 0 {
		return nil, nil
	}
	m, err := c.msgs.Next(jetstream.NextContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("pcap: export: read: %w", err)
	}
	c.left--
	if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
		c.left = 0 // nothing more now, whatever was deleted meanwhile
	}
	return m, nil
}

func (c *cursor) stop() { c.msgs.Stop() }

// request is a request message as the export needs it.
type request struct {
	id            string
	at            time.Time // ce-time, or when the stream stored it
	deadline      time.Time
	remote, local netip.AddrPort
	protocol      string
	datagram      []byte
	// coap and rpc: what the reply needs
	coapCON   bool
	coapMID   uint16
	coapToken []byte
	rpcID     uint64
}

// parseRequest rebuilds the request datagram of m from its body and
// headers: the body for raw listeners; for coap, the datagram head plus the
// body (or, for a reassembled Block1 upload, one message encoded from the
// headers with the whole body); for rpc, the Call envelope re-encoded. A
// message from a ws listener has no datagram: it comes back with its id,
// times and protocol alone.
func parseRequest(m jetstream.Msg) (*request, error) {
	h := m.Headers()
	r := &request{id: h.Get(schemas.HeaderID)}
	var err error
	if v := h.Get(schemas.HeaderTime); v != "" {
		if r.at, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return nil, err
		}
	} else {
		md, err := m.Metadata()
		if err != nil {
			return nil, err
		}
		r.at = md.Timestamp
	}
	r.deadline = r.at.Add(DefaultDeadline)
	if ms, err := strconv.ParseInt(h.Get(schemas.HeaderDeadline), 10, 64); err == nil {
		r.deadline = time.UnixMilli(ms)
	}
	r.protocol = protocolOf(h)
	if r.protocol == schemas.ProtocolWS {
		// A WebSocket message, or a connection event: no datagram to
		// rebuild, whatever its type and headers.
		return r, nil
	}
	if r.remote, err = netip.ParseAddrPort(h.Get(schemas.HeaderRemote)); err != nil {
		return nil, err
	}
	if r.local, err = netip.ParseAddrPort(h.Get(schemas.HeaderLocal)); err != nil {
		return nil, err
	}
	body := m.Data()
	switch r.protocol {
	case schemas.ProtocolRaw:
		r.datagram = body
	case schemas.ProtocolRPC:
		if r.rpcID, err = strconv.ParseUint(h.Get(schemas.HeaderRPCID), 10, 64); err != nil {
			return nil, err
		}
		r.datagram, err = proto.Marshal(&rpcpb.Call{
			Id: r.rpcID, Service: h.Get(schemas.HeaderRPCService), Method: h.Get(schemas.HeaderRPCMethod), Params: body,
		})
		if err != nil {
			return nil, err
		}
	case schemas.ProtocolCoAP:
		v := h.Get(schemas.HeaderDatagramHead)
		if v == "" {
			// Reassembled from a Block1 upload: one CON request, message
			// id 0, no token.
			r.coapCON = true
			if r.datagram, err = r.encodeCoAP(h, body); err != nil {
				return nil, err
			}
			break
		}
		head, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, err
		}
		// Byte 0: version, type and token length; bytes 2-3: message id;
		// then the token.
		if len(head) < 4 || head[0]>>6 != 1 || len(head) < 4+int(head[0]&0x0f) {
			return nil, fmt.Errorf("bad %s", schemas.HeaderDatagramHead)
		}
		r.coapCON = head[0]>>4&3 == 0
		r.coapMID = uint16(head[2])<<8 | uint16(head[3])
		r.coapToken = head[4 : 4+int(head[0]&0x0f)]
		r.datagram = append(head, body...)
	default:
		return nil, fmt.Errorf("request of unknown protocol (%s %q, %s %q)",
			schemas.HeaderSource, h.Get(schemas.HeaderSource), schemas.HeaderType, h.Get(schemas.HeaderType))
	}
	return r, nil
}

// protocolOf returns a request's protocol: the one its ce-source names,
// or else the one of its ce-type; empty if neither says.
func protocolOf(h map[string][]string) string {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if _, _, proto, ok := schemas.ParseSource(get(schemas.HeaderSource)); ok {
		return proto
	}
	switch get(schemas.HeaderType) {
	case schemas.TypeRaw:
		return schemas.ProtocolRaw
	case schemas.TypeCoAP:
		return schemas.ProtocolCoAP
	case schemas.TypeRPC:
		return schemas.ProtocolRPC
	}
	return ""
}

// encodeCoAP encodes a CoAP request from the headers of a request message
// that has no datagram head: its request line (method, percent-encoded
// path and query), Content-Format and Accept, with r's type, message id and
// token.
func (r *request) encodeCoAP(h map[string][]string, body []byte) ([]byte, error) {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	line := get(schemas.HeaderCoAPRequest)
	method, uri, _ := strings.Cut(line, " ")
	code, ok := coap.ParseMethod(method)
	if !ok {
		return nil, fmt.Errorf("%s %q: unknown method", schemas.HeaderCoAPRequest, line)
	}
	path, query, hasQuery := strings.Cut(uri, "?")
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("%s %q: no path", schemas.HeaderCoAPRequest, line)
	}
	var opts message.Options
	for _, seg := range coap.SplitPath(path) {
		opts = opts.Add(message.Option{ID: message.URIPath, Value: []byte(seg)})
	}
	if hasQuery {
		for _, q := range coap.SplitQuery(query) {
			opts = opts.Add(message.Option{ID: message.URIQuery, Value: []byte(q)})
		}
	}
	for id, k := range map[message.OptionID]string{message.ContentFormat: schemas.HeaderCoAPContentFormat, message.Accept: schemas.HeaderCoAPAccept} {
		if s := get(k); s != "" {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil {
				return nil, err
			}
			opts = opts.Add(message.Option{ID: id, Value: encodeUint(uint32(n))})
		}
	}
	typ := message.NonConfirmable
	if r.coapCON {
		typ = message.Confirmable
	}
	return encodeCoAP(message.Message{Token: r.coapToken, Options: opts, Code: code, Payload: body, MessageID: int32(r.coapMID), Type: typ})
}

// reply rebuilds the datagram the gateway sent for a worker's reply with
// header and body, as egress and the protocol edges build it. It reports
// false when the gateway sent nothing (an error status on a raw listener).
// CoAP responses are written as the piggybacked ACK of a CON request (the
// usual case; the gateway may have acknowledged first and sent a separate
// CON) and as a NON with the request's message id for a NON request (the
// gateway draws a fresh one); a body larger than one block is written
// whole, not block-wise.
func (r *request) reply(h map[string][]string, body []byte) ([]byte, bool) {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	failed := get(schemas.HeaderStatus) == schemas.StatusError
	switch r.protocol {
	case schemas.ProtocolRaw:
		return body, !failed
	case schemas.ProtocolRPC:
		rep := &rpcpb.Reply{Id: r.rpcID, Body: body}
		if failed {
			rep.Status, rep.Body = rpcpb.Status_STATUS_INTERNAL, nil
		} else if s := get(schemas.HeaderRPCStatus); s != "" {
			n, err := strconv.ParseInt(s, 10, 32)
			if err != nil || n < 0 {
				rep.Status, rep.Body = rpcpb.Status_STATUS_INTERNAL, nil
			} else {
				rep.Status = rpcpb.Status(n)
				rep.Error = get(schemas.HeaderRPCError)
			}
		} else {
			rep.Error = get(schemas.HeaderRPCError)
		}
		b, err := proto.Marshal(rep)
		return b, err == nil
	}
	// coap
	code := codes.Content
	var opts message.Options
	if failed {
		code, body = codes.InternalServerError, nil
	} else {
		if s := get(schemas.HeaderCoAPCode); s != "" {
			c, err := coap.ParseCode(s)
			if err != nil {
				c, body = codes.InternalServerError, nil
			}
			code = c
		}
		if s := get(schemas.HeaderCoAPContentFormat); s != "" {
			if n, err := strconv.ParseUint(s, 10, 16); err == nil {
				opts = opts.Add(message.Option{ID: message.ContentFormat, Value: encodeUint(uint32(n))})
			}
		}
		if s := get(schemas.HeaderCoAPMaxAge); s != "" {
			if n, err := strconv.ParseUint(s, 10, 32); err == nil {
				opts = opts.Add(message.Option{ID: message.MaxAge, Value: encodeUint(uint32(n))})
			}
		}
		if s := get(schemas.HeaderCoAPETag); s != "" {
			if t, err := hex.DecodeString(s); err == nil && len(t) >= 1 && len(t) <= 8 {
				opts = opts.Add(message.Option{ID: message.ETag, Value: t})
			}
		}
	}
	typ := message.NonConfirmable
	if r.coapCON {
		typ = message.Acknowledgement
	}
	b, err := encodeCoAP(message.Message{Token: r.coapToken, Options: opts, Code: code, Payload: body, MessageID: int32(r.coapMID), Type: typ})
	return b, err == nil
}

func encodeCoAP(m message.Message) ([]byte, error) {
	n, err := coder.DefaultCoder.Size(m)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := coder.DefaultCoder.Encode(m, b); err != nil {
		return nil, err
	}
	return b, nil
}

func encodeUint(n uint32) []byte {
	var b []byte
	for ; n > 0; n >>= 8 {
		b = append([]byte{byte(n)}, b...)
	}
	return b
}

// errAddress reports a datagram whose addresses cannot make a frame.
var errAddress = errors.New("pcap: addresses of different families, or a datagram too large")

// frameWriter writes UDP datagrams as Ethernet frames.
type frameWriter struct {
	w   *pcapgo.Writer
	buf gopacket.SerializeBuffer
	id  uint16 // IPv4 identification, counting up
}

// write writes payload from src to dst at at: Ethernet, IPv4 or IPv6, UDP,
// with correct IP and UDP checksums.
func (fw *frameWriter) write(at time.Time, src, dst netip.AddrPort, srcMAC, dstMAC net.HardwareAddr, payload []byte) error {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	// A wildcard listener that did not learn a datagram's destination
	// records it as 0.0.0.0 or ::, whatever the client's family.
	switch {
	case sa.Is4() == da.Is4():
	case da.IsUnspecified() && sa.Is4():
		da = netip.IPv4Unspecified()
	case da.IsUnspecified():
		da = netip.IPv6Unspecified()
	case sa.IsUnspecified() && da.Is4():
		sa = netip.IPv4Unspecified()
	case sa.IsUnspecified():
		sa = netip.IPv6Unspecified()
	}
	if sa.Is4() != da.Is4() || len(payload) > 65507 {
		return errAddress
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	var ip gopacket.SerializableLayer
	if sa.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		fw.id++
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: fw.id, Protocol: layers.IPProtocolUDP,
			SrcIP: sa.AsSlice(), DstIP: da.AsSlice()}
		u.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP,
			SrcIP: sa.AsSlice(), DstIP: da.AsSlice()}
		u.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(fw.buf, opts, eth, ip, u, gopacket.Payload(payload)); err != nil {
		return fmt.Errorf("pcap: export: frame: %w", err)
	}
	frame := fw.buf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(frame), Length: len(frame)}
	if err := fw.w.WritePacket(ci, frame); err != nil {
		return fmt.Errorf("pcap: export: write: %w", err)
	}
	return nil
}
