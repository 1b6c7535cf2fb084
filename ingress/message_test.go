package ingress

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// referenceMessage is the request message of schemas/README.md written
// plainly, one header at a time: Message must build exactly this.
func referenceMessage(r Request) (*nats.Msg, string) {
	msg := &nats.Msg{
		Subject: schemas.InSubject(r.Prefix, r.Port),
		Reply:   r.Reply + "." + r.ID,
		Data:    r.Body,
		Header: nats.Header{
			schemas.HeaderSpecVersion: {schemas.SpecVersion},
			schemas.HeaderID:          {r.ID},
			schemas.HeaderSource:      {r.Source},
			schemas.HeaderType:        {schemas.TypeRaw},
			schemas.HeaderRemote:      {r.Remote.String()},
			schemas.HeaderLocal:       {r.Local.String()},
			schemas.HeaderDeadline:    {strconv.FormatInt(r.Deadline.UnixMilli(), 10)},
			schemas.HeaderReply:       {r.Reply + "." + r.ID},
		},
	}
	h := msg.Header
	if r.KeepTime {
		h[schemas.HeaderTime] = []string{r.Received.UTC().Format(time.RFC3339Nano)}
	}
	switch c := r.CoAP; {
	case c != nil:
		msg.Subject = schemas.CoAPSubject(r.Prefix, r.Port, c.Method, c.Segments)
		h[schemas.HeaderType] = []string{schemas.TypeCoAP}
		line := c.Method + " " + c.Path
		if c.Query != "" {
			line += "?" + c.Query
		}
		h[schemas.HeaderCoAPRequest] = []string{line}
		if c.ContentFormat >= 0 {
			h[schemas.HeaderCoAPContentFormat] = []string{strconv.Itoa(c.ContentFormat)}
		}
		if c.Accept >= 0 {
			h[schemas.HeaderCoAPAccept] = []string{strconv.Itoa(c.Accept)}
		}
		if c.Head != nil {
			h[schemas.HeaderDatagramHead] = []string{base64.StdEncoding.EncodeToString(c.Head)}
		}
	case r.RPC != nil:
		msg.Subject = schemas.RPCSubject(r.Prefix, r.Port, r.RPC.Service, r.RPC.Method)
		h[schemas.HeaderType] = []string{schemas.TypeRPC}
		h[schemas.HeaderRPCService] = []string{r.RPC.Service}
		h[schemas.HeaderRPCMethod] = []string{r.RPC.Method}
		h[schemas.HeaderRPCID] = []string{strconv.FormatUint(r.RPC.ID, 10)}
	}
	return msg, r.Prefix + ".capture" + msg.Subject[len(r.Prefix)+len(".in"):]
}

// sameMessage reports how got differs from want, or "".
func sameMessage(got *nats.Msg, gotCapture string, want *nats.Msg, wantCapture string) string {
	if got.Subject != want.Subject || got.Reply != want.Reply || gotCapture != wantCapture || string(got.Data) != string(want.Data) {
		return fmt.Sprintf("subject %q, reply %q, capture %q, data %q; want %q, %q, %q, %q",
			got.Subject, got.Reply, gotCapture, got.Data, want.Subject, want.Reply, wantCapture, want.Data)
	}
	if !reflect.DeepEqual(got.Header, want.Header) {
		return fmt.Sprintf("header\n%q\nwant\n%q", got.Header, want.Header)
	}
	return ""
}

func testRequest() Request {
	at := time.Date(2026, 11, 23, 18, 4, 5, 123456789, time.FixedZone("CET", 3600))
	return Request{
		Prefix: "udpgate", Port: 5683, Source: "udpgate://node-1/5683/coap",
		Reply: "udpgate.reply.node-1", ID: "0a1b2c3d4e5f-1f",
		Remote:   netip.MustParseAddrPort("192.0.2.7:40001"),
		Local:    netip.MustParseAddrPort("[2001:db8::1]:5683"),
		Received: at, Deadline: at.Add(5 * time.Second),
		Body: []byte("hello"),
	}
}

func testCoAPRequest() *coap.Request {
	return &coap.Request{
		Method: "GET", Segments: []string{"sensors", "a.b", ""}, Path: "/sensors/a.b/",
		ContentFormat: -1, Accept: -1, Token: []byte{0xde, 0xad, 0xbe, 0xef},
		Confirmable: true, MessageID: 4242, Head: []byte{0x44, 0x01, 0x10, 0x92, 0xde, 0xad, 0xbe, 0xef},
	}
}

func TestMessage(t *testing.T) {
	full := testCoAPRequest()
	full.Query, full.ContentFormat, full.Accept, full.Confirmable = "a=1&b", 0, 50, false
	noHead := testCoAPRequest()
	noHead.Head, noHead.Token, noHead.Segments, noHead.Path = nil, nil, nil, "/"
	tests := []struct {
		name string
		edit func(*Request)
	}{
		{"raw", func(*Request) {}},
		{"raw IPv4 local, empty body, zero times", func(r *Request) {
			r.Local, r.Body, r.Received, r.Deadline = netip.MustParseAddrPort("127.0.0.1:9000"), nil, time.Time{}, time.Time{}
		}},
		{"raw IPv6 with zone, v4-mapped local", func(r *Request) {
			r.Remote = netip.MustParseAddrPort("[fe80::1:2:3:4%eth0-with-a-long-name]:65535")
			r.Local = netip.MustParseAddrPort("[::ffff:192.0.2.1]:9000")
		}},
		{"raw whole seconds", func(r *Request) {
			r.Received = time.Unix(1_800_000_000, 0)
			r.Deadline = r.Received.Add(time.Second)
		}},
		{"coap", func(r *Request) { r.CoAP = testCoAPRequest() }},
		{"coap every option", func(r *Request) { r.CoAP = full }},
		{"coap reassembled, no token, root", func(r *Request) { r.CoAP = noHead }},
		{"coap with the edge's request line", func(r *Request) {
			c := testCoAPRequest()
			c.RequestLine = "GET /sensors/a.b/"
			r.CoAP = c
		}},
		{"imported, with its time", func(r *Request) { r.KeepTime = true }},
		{"rpc", func(r *Request) {
			r.RPC = &rpc.Call{ID: 1<<64 - 1, Service: "places.v1", Method: "Get"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRequest()
			tt.edit(&r)
			want, wantCapture := referenceMessage(r)
			got, capture := Message(r)
			if d := sameMessage(got, capture, want, wantCapture); d != "" {
				t.Errorf("Message: %s", d)
			}
			// The publisher's way: the subject computed once, the id
			// from the table.
			tb := exchange.NewTable(16)
			r.ID = tb.ID(3)
			want, wantCapture = referenceMessage(r)
			var subject, captureSubject string
			if r.CoAP == nil && r.RPC == nil {
				subject, captureSubject = want.Subject, wantCapture
			}
			reused := &nats.Msg{Header: nats.Header{}}
			live, liveCapture := newMessage(reused, &Request{
				Prefix: r.Prefix, Port: r.Port, Source: r.Source, Reply: r.Reply,
				Remote: r.Remote, Local: r.Local, Received: r.Received, KeepTime: r.KeepTime, Deadline: r.Deadline,
				Body: r.Body, CoAP: r.CoAP, RPC: r.RPC,
			}, subject, captureSubject, tb, 3)
			if d := sameMessage(live, liveCapture, want, wantCapture); live != reused || d != "" {
				t.Errorf("newMessage: %s", d)
			}
			if n, max := len(live.Header), rawHeaders+coapHeaders; n > max {
				t.Errorf("%d headers, more than %d", n, max)
			}
			// The header values are independent: adding to one leaves the
			// others alone.
			got.Header.Add(schemas.HeaderID, "x")
			if v := got.Header.Values(schemas.HeaderSpecVersion); len(v) != 1 {
				t.Errorf("after Add, %s = %q", schemas.HeaderSpecVersion, v)
			}
		})
	}
}

var sink *nats.Msg

func BenchmarkMessage(b *testing.B) {
	for _, bc := range []struct {
		name string
		edit func(*Request)
	}{
		{"raw", func(*Request) {}},
		{"coap", func(r *Request) { r.CoAP = testCoAPRequest() }},
		{"rpc", func(r *Request) { r.RPC = &rpc.Call{ID: 7, Service: "places.v1", Method: "Get"} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			r := testRequest()
			bc.edit(&r)
			b.ReportAllocs()
			for b.Loop() {
				sink, _ = Message(r)
			}
		})
		// As the publisher builds it: the id from the table, a raw
		// listener's subject computed once, the message recycled once
		// its publish is acknowledged.
		b.Run(bc.name+"-live", func(b *testing.B) {
			r := testRequest()
			bc.edit(&r)
			r.ID = ""
			tb := exchange.NewTable(16)
			var subject, capture string
			if r.CoAP == nil && r.RPC == nil {
				subject = schemas.InSubject(r.Prefix, r.Port)
				capture = schemas.CaptureSubject(r.Prefix, subject)
			}
			var s Server
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				msg, _ := s.msgs.Get().(*nats.Msg)
				msg, _ = newMessage(msg, &r, subject, capture, tb, seq)
				s.recycle(msg)
			}
		})
	}
}

// FuzzMessage checks Message, and the publisher's way of building the
// same message, against referenceMessage for arbitrary field values.
func FuzzMessage(f *testing.F) {
	f.Add(uint8(0), "udpgate", uint16(9000), "GET", "a.b", "", []byte{1, 2}, []byte{0x40, 1}, 0, -1, uint16(7), int64(1_800_000_000_123_456_789), "192.0.2.1:1")
	f.Add(uint8(1), "acme.udp", uint16(5683), "POST", "żółw", "~", []byte(nil), []byte(nil), -1, 50, uint16(65535), int64(0), "[fe80::1%eth0]:5683")
	f.Add(uint8(2), "x", uint16(7000), "svc.v1", "Get", "", []byte(nil), []byte(nil), 0, 0, uint16(0), int64(-1), "[::ffff:10.0.0.1]:53")
	f.Fuzz(func(t *testing.T, kind uint8, prefix string, port uint16, a, b, c string, token, head []byte, cf, accept int, mid uint16, nanos int64, remote string) {
		ap, err := netip.ParseAddrPort(remote)
		if err != nil {
			return
		}
		at := time.Unix(0, nanos)
		r := Request{
			Prefix: prefix, Port: port, Source: b, Reply: a, ID: c + "-1",
			Remote: ap, Local: ap, Received: at, KeepTime: mid%3 == 0, Deadline: at.Add(time.Second), Body: head,
		}
		switch kind % 3 {
		case 1:
			r.CoAP = &coap.Request{
				Method: a, Segments: []string{b, c}, Path: "/" + b + "/" + c, Query: c,
				ContentFormat: cf, Accept: accept, Token: token, Confirmable: mid%2 == 0,
				MessageID: mid, Head: head,
			}
		case 2:
			r.RPC = &rpc.Call{ID: uint64(nanos), Service: a, Method: b}
		}
		want, wantCapture := referenceMessage(r)
		got, capture := Message(r)
		if d := sameMessage(got, capture, want, wantCapture); d != "" {
			t.Fatalf("Message: %s", d)
		}
		tb := exchange.NewTable(16)
		r.ID = tb.ID(5)
		want, wantCapture = referenceMessage(r)
		var s Server
		for range 2 { // a fresh message, then a recycled one
			msg, _ := s.msgs.Get().(*nats.Msg)
			got, capture = newMessage(msg, &r, "", "", tb, 5)
			if d := sameMessage(got, capture, want, wantCapture); d != "" {
				t.Fatalf("newMessage: %s", d)
			}
			s.recycle(got)
		}
	})
}
