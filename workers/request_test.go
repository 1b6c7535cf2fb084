package workers

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

func TestParseRequest(t *testing.T) {
	// full returns the headers of an imported CoAP request (it has
	// ce-time), as the gateway writes them.
	full := func() nats.Header {
		return nats.Header{
			schemas.HeaderSpecVersion:  {schemas.SpecVersion},
			schemas.HeaderID:           {"abc"},
			schemas.HeaderSource:       {"udpgate://node1/5683/coap"},
			schemas.HeaderType:         {schemas.TypeCoAP},
			schemas.HeaderTime:         {"2026-01-02T03:04:05.123456789Z"},
			schemas.HeaderRemote:       {"[2001:db8::1]:40000"},
			schemas.HeaderLocal:        {"127.0.0.1:5683"},
			schemas.HeaderDeadline:     {"1767323045623"},
			schemas.HeaderReply:        {"udpgate.reply.node1.abc"},
			schemas.HeaderCoAPRequest:  {"GET /time"},
			schemas.HeaderDatagramHead: {datagramHead(0, 7, []byte{1})},
		}
	}
	tests := []struct {
		name    string
		reply   string // the message's reply subject
		edit    func(nats.Header)
		check   func(*Request) bool
		wantErr bool
	}{
		{
			name: "complete",
			edit: func(nats.Header) {},
			check: func(r *Request) bool {
				return r.ID == "abc" && r.Subject == "s" && r.Reply == "udpgate.reply.node1.abc" &&
					r.Node == "node1" && r.Listener == "5683/coap" && r.Port == 5683 && r.Protocol == schemas.ProtocolCoAP &&
					r.Remote == netip.MustParseAddrPort("[2001:db8::1]:40000") &&
					r.Local == netip.MustParseAddrPort("127.0.0.1:5683") &&
					r.Received.Equal(time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)) &&
					r.Deadline.Equal(time.UnixMilli(1767323045623)) && r.Delivery == 0 &&
					r.CoAP != nil && r.CoAP.Method == "GET" && r.CoAP.Path == "/time" && r.CoAP.MessageID == 7 &&
					r.RPC == nil
			},
		},
		{
			name:  "message reply subject wins",
			reply: "udpgate.reply.node1.direct",
			edit:  func(nats.Header) {},
			check: func(r *Request) bool { return r.Reply == "udpgate.reply.node1.direct" },
		},
		{
			name:  "message reply subject alone",
			reply: "_INBOX.x.1",
			edit:  func(h nats.Header) { h.Del(schemas.HeaderReply) },
			check: func(r *Request) bool { return r.Reply == "_INBOX.x.1" },
		},
		{
			name:  "live request: no ce-time",
			edit:  func(h nats.Header) { h.Del(schemas.HeaderTime) },
			check: func(r *Request) bool { return r.Received.IsZero() },
		},
		{
			name: "raw listener",
			edit: func(h nats.Header) {
				h.Set(schemas.HeaderSource, "udpgate://node1/9000/raw")
				h.Set(schemas.HeaderType, schemas.TypeRaw)
			},
			check: func(r *Request) bool {
				return r.Protocol == schemas.ProtocolRaw && r.Listener == "9000/raw" && r.CoAP == nil && r.RPC == nil
			},
		},
		{
			name: "node with dots",
			edit: func(h nats.Header) { h.Set(schemas.HeaderSource, "udpgate://gw-1.example.org/9000/raw") },
			check: func(r *Request) bool {
				return r.Node == "gw-1.example.org" && r.Port == 9000 && r.Protocol == schemas.ProtocolRaw
			},
		},
		{
			name: "no headers",
			edit: func(h nats.Header) { clear(h) },
			check: func(r *Request) bool {
				return r.ID == "" && r.Reply == "" && r.Node == "" && r.Listener == "" && r.Port == 0 &&
					!r.Remote.IsValid() && !r.Local.IsValid() && r.Received.IsZero() && r.Deadline.IsZero() && r.CoAP == nil
			},
			wantErr: true,
		},
		{
			// The reply subject names the exchange: a request without
			// ce-id can still be answered.
			name:  "no id",
			edit:  func(h nats.Header) { h.Del(schemas.HeaderID) },
			check: func(r *Request) bool { return r.ID == "" && r.Reply == "udpgate.reply.node1.abc" },
		},
		{
			name:    "no reply",
			edit:    func(h nats.Header) { h.Del(schemas.HeaderReply) },
			check:   func(r *Request) bool { return r.ID == "abc" && r.Reply == "" && r.Port == 5683 },
			wantErr: true,
		},
		{
			name:    "bad deadline",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderDeadline, "1.5e12") },
			check:   func(r *Request) bool { return r.Deadline.IsZero() && r.Port == 5683 },
			wantErr: true,
		},
		{
			name:    "negative deadline",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderDeadline, "-1") },
			check:   func(r *Request) bool { return r.Deadline.IsZero() },
			wantErr: true,
		},
		{
			name: "port out of range",
			edit: func(h nats.Header) { h.Set(schemas.HeaderSource, "udpgate://node1/70000/raw") },
			check: func(r *Request) bool {
				return r.Node == "" && r.Port == 0 && r.Protocol == "" && r.Listener == ""
			},
			wantErr: true,
		},
		{
			name:    "source without protocol",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderSource, "udpgate://node1/9000/") },
			check:   func(r *Request) bool { return r.Port == 0 && r.Protocol == "" },
			wantErr: true,
		},
		{
			name:    "source without node",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderSource, "udpgate://9000/raw") },
			check:   func(r *Request) bool { return r.Port == 0 && r.Protocol == "" },
			wantErr: true,
		},
		{
			name:    "source of another scheme",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderSource, "coap://node1/5683/coap") },
			check:   func(r *Request) bool { return r.Node == "" && r.Port == 0 && r.CoAP != nil },
			wantErr: true,
		},
		{
			name: "v1 listener header only",
			edit: func(h nats.Header) {
				h.Del(schemas.HeaderSource)
				h.Del(schemas.HeaderType)
				h.Set("udpgate-listener", "5683/coap")
			},
			check:   func(r *Request) bool { return r.Port == 0 && r.Listener == "" && r.CoAP == nil },
			wantErr: false,
		},
		{
			name:    "address without port",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderRemote, "192.0.2.1") },
			check:   func(r *Request) bool { return !r.Remote.IsValid() && r.Local.IsValid() },
			wantErr: true,
		},
		{
			name:    "time not RFC 3339",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderTime, "Mon Jan 2 15:04:05 2006") },
			check:   func(r *Request) bool { return r.Received.IsZero() },
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := full()
			tt.edit(h)
			r, err := parseRequest("s", tt.reply, h, nil)
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, want error %v", err, tt.wantErr)
			}
			if !tt.check(r) {
				t.Errorf("Request = %+v", r)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	head := func(b ...byte) []byte { return b }
	f.Add("abc", "", "udpgate.reply.node1.abc", "udpgate://node1/9000/raw", "192.0.2.7:40000", "[::1]:9000", "", "1767323045623",
		false, "", "", "", []byte(nil))
	f.Add("", "", "", "", "", "", "", "", false, "", "", "", []byte(nil))
	f.Add("x", "_INBOX.y", "", "udpgate:///", "[::1]", "1.2.3.4:99999", "2026-13-01T00:00:00Z", "99999999999999999999",
		false, "", "", "", []byte(nil))
	f.Add("x", "y", "z", "udpgate://a/b/65535/rpc", "[fe80::1%eth0]:1", "0.0.0.0:0", "0001-01-01T00:00:00Z", "-0",
		false, "", "", "", []byte(nil))
	f.Add("abc", "r", "", "udpgate://node1/5683/coap", "192.0.2.7:40000", "[::1]:5683", "2026-01-02T03:04:05.1Z", "1767323045623",
		true, "GET /a/b%2Fc/%C5%BC?x=1&y", "0", "50", head(0x42, 0x01, 0x12, 0x34, 0xc0, 0xff))
	f.Add("abc", "", "r", "udpgate://node1/5683/coap", "", "", "", "",
		false, "iPATCH /", "65535", "", head(0x50, 0x07, 0xff, 0xff))
	f.Add("abc", "", "r", "udpgate://node1/9000/raw", "", "", "", "",
		true, "GET a//%zz?%&&", "-1", "65536", head(0x6f, 0x01))
	f.Fuzz(func(t *testing.T, id, reply, replyHeader, source, remote, local, received, deadline string,
		coapType bool, line, contentFormat, accept string, head []byte) {
		h := nats.Header{
			schemas.HeaderID:                {id},
			schemas.HeaderReply:             {replyHeader},
			schemas.HeaderSource:            {source},
			schemas.HeaderRemote:            {remote},
			schemas.HeaderLocal:             {local},
			schemas.HeaderTime:              {received},
			schemas.HeaderDeadline:          {deadline},
			schemas.HeaderCoAPRequest:       {line},
			schemas.HeaderCoAPContentFormat: {contentFormat},
			schemas.HeaderCoAPAccept:        {accept},
			schemas.HeaderDatagramHead:      {base64.StdEncoding.EncodeToString(head)},
		}
		if coapType {
			h.Set(schemas.HeaderType, schemas.TypeCoAP)
		}
		r, err := parseRequest("s", reply, h, nil)
		if r == nil {
			t.Fatal("nil Request")
		}
		if r.ID != id {
			t.Errorf("ID = %q, want %q", r.ID, id)
		}
		if want := cmp.Or(reply, replyHeader); r.Reply != want {
			t.Errorf("Reply = %q, want %q", r.Reply, want)
		}
		if r.Reply == "" && err == nil {
			t.Error("no error for a request that cannot be answered")
		}
		if node, port, proto, ok := schemas.ParseSource(source); ok {
			if r.Node != node || r.Port != port || r.Protocol != proto || r.Listener != schemas.Listener(port, proto) {
				t.Errorf("source %q parsed as %q %d %q %q", source, r.Node, r.Port, r.Protocol, r.Listener)
			}
		} else if r.Node != "" || r.Port != 0 || r.Protocol != "" || r.Listener != "" {
			t.Errorf("bad source %q parsed as %q %d %q %q", source, r.Node, r.Port, r.Protocol, r.Listener)
		}
		if ms, perr := strconv.ParseInt(deadline, 10, 64); perr == nil && ms > 0 && !r.Deadline.Equal(time.UnixMilli(ms)) {
			t.Errorf("deadline %q parsed as %v", deadline, r.Deadline)
		}
		if ap, perr := netip.ParseAddrPort(remote); perr == nil && r.Remote != ap {
			t.Errorf("remote %q parsed as %v", remote, r.Remote)
		}
		if isCoAP := coapType || r.Protocol == schemas.ProtocolCoAP; isCoAP != (r.CoAP != nil) {
			t.Fatalf("CoAP = %+v for ce-type CoAP %v, protocol %q", r.CoAP, coapType, r.Protocol)
		}
		if r.CoAP != nil {
			checkCoAP(t, r.CoAP, line, contentFormat, accept, head)
		}
	})
}

// checkCoAP checks that c holds what the headers say, or zero values.
func checkCoAP(t *testing.T, c *CoAPRequest, line, contentFormat, accept string, head []byte) {
	t.Helper()
	if c.Method == "" {
		if c.Path != "" || c.Segments != nil || c.Query != nil {
			t.Errorf("request line %q parsed as path %q, segments %q, query %q without a method", line, c.Path, c.Segments, c.Query)
		}
	} else {
		uri, ok := strings.CutPrefix(line, c.Method+" ")
		if !ok || strings.Contains(c.Method, " ") {
			t.Fatalf("request line %q parsed as method %q", line, c.Method)
		}
		path, query, hasQuery := strings.Cut(uri, "?")
		if c.Path != "/"+strings.Join(c.Segments, "/") {
			t.Errorf("Path %q is not the joined Segments %q", c.Path, c.Segments)
		}
		if want, err := url.PathUnescape(path); err != nil || c.Path != want {
			t.Errorf("path %q parsed as %q", path, c.Path)
		}
		if hasQuery != (c.Query != nil) || hasQuery && len(c.Query) != strings.Count(query, "&")+1 {
			t.Errorf("query %q parsed as %q", query, c.Query)
		}
	}
	for _, o := range []struct {
		header string
		got    int
	}{{contentFormat, c.ContentFormat}, {accept, c.Accept}} {
		n, err := strconv.ParseUint(o.header, 10, 16)
		if err != nil && o.got != -1 || err == nil && o.got != int(n) {
			t.Errorf("option %q parsed as %d", o.header, o.got)
		}
	}
	valid := len(head) >= 4 && head[0]>>6 == 1 && head[0]>>4&3 <= 1 && head[0]&0x0f <= 8 && len(head) >= 4+int(head[0]&0x0f)
	switch {
	case !valid:
		if c.Type != "" || c.MessageID != 0 || c.Token != nil {
			t.Errorf("invalid head %x parsed as %s %d token %x", head, c.Type, c.MessageID, c.Token)
		}
	case c.Type != [...]string{"CON", "NON"}[head[0]>>4&3]:
		t.Errorf("head %x: Type %q", head, c.Type)
	case c.MessageID != uint16(head[2])<<8|uint16(head[3]):
		t.Errorf("head %x: MessageID %d", head, c.MessageID)
	case !bytes.Equal(c.Token, head[4:4+int(head[0]&0x0f)]):
		t.Errorf("head %x: Token %x", head, c.Token)
	}
}

// benchHeader is a live raw request's header, as the gateway writes it.
func benchHeader() nats.Header {
	return nats.Header{
		schemas.HeaderSpecVersion: {schemas.SpecVersion},
		schemas.HeaderID:          {"5f1c2a9b3e7d-1a2b"},
		schemas.HeaderSource:      {"udpgate://node1/9000/raw"},
		schemas.HeaderType:        {schemas.TypeRaw},
		schemas.HeaderRemote:      {"192.0.2.7:40000"},
		schemas.HeaderLocal:       {"127.0.0.1:9000"},
		schemas.HeaderDeadline:    {"1767323045623"},
		schemas.HeaderReply:       {"udpgate.reply.node1.5f1c2a9b3e7d-1a2b"},
	}
}

func BenchmarkParseRequest(b *testing.B) {
	h := benchHeader()
	body := []byte("ping")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRequest("udpgate.in.9000", "udpgate.reply.node1.5f1c2a9b3e7d-1a2b", h, body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseRequestCoAP(b *testing.B) {
	h := benchHeader()
	h.Set(schemas.HeaderSource, "udpgate://node1/5683/coap")
	h.Set(schemas.HeaderType, schemas.TypeCoAP)
	h.Set(schemas.HeaderLocal, "127.0.0.1:5683")
	h.Set(schemas.HeaderCoAPRequest, "GET /sensors/temp%20C?unit=C")
	h.Set(schemas.HeaderCoAPAccept, "50")
	h.Set(schemas.HeaderDatagramHead, datagramHead(0, 4660, []byte{0xc0, 0xff, 0xee, 0x01}))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRequest("udpgate.in.5683.GET.sensors.temp~20C", "udpgate.reply.node1.5f1c2a9b3e7d-1a2b", h, nil); err != nil {
			b.Fatal(err)
		}
	}
}
