package workers

import (
	"encoding/hex"
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
	full := func() nats.Header {
		return nats.Header{
			schemas.HeaderID:            {"abc"},
			schemas.HeaderReply:         {"udpgate.reply.node1"},
			schemas.HeaderListener:      {"5683/coap"},
			schemas.HeaderRemote:        {"[2001:db8::1]:40000"},
			schemas.HeaderLocal:         {"127.0.0.1:5683"},
			schemas.HeaderTime:          {"2026-01-02T03:04:05.123456789Z"},
			schemas.HeaderDeadline:      {"1767323045623"},
			schemas.HeaderCoAPMethod:    {"GET"},
			schemas.HeaderCoAPPath:      {"/time"},
			schemas.HeaderCoAPType:      {"CON"},
			schemas.HeaderCoAPMessageID: {"7"},
		}
	}
	tests := []struct {
		name    string
		edit    func(nats.Header)
		check   func(*Request) bool
		wantErr bool
	}{
		{
			name: "complete",
			edit: func(nats.Header) {},
			check: func(r *Request) bool {
				return r.ID == "abc" && r.Port == 5683 && r.Protocol == schemas.ProtocolCoAP &&
					r.Remote == netip.MustParseAddrPort("[2001:db8::1]:40000") &&
					r.Local == netip.MustParseAddrPort("127.0.0.1:5683") &&
					r.Received.Equal(time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)) &&
					r.Deadline.Equal(time.UnixMilli(1767323045623)) &&
					r.CoAP != nil && r.CoAP.Method == "GET" && r.CoAP.Path == "/time"
			},
		},
		{
			name:  "raw listener",
			edit:  func(h nats.Header) { h.Set(schemas.HeaderListener, "9000/raw") },
			check: func(r *Request) bool { return r.Protocol == schemas.ProtocolRaw && r.CoAP == nil },
		},
		{
			name: "no headers",
			edit: func(h nats.Header) { clear(h) },
			check: func(r *Request) bool {
				return r.ID == "" && r.Listener == "" && r.Port == 0 && !r.Remote.IsValid() &&
					!r.Local.IsValid() && r.Received.IsZero() && r.Deadline.IsZero()
			},
			wantErr: true,
		},
		{
			name:    "no id",
			edit:    func(h nats.Header) { h.Del(schemas.HeaderID) },
			check:   func(r *Request) bool { return r.ID == "" && r.Port == 5683 },
			wantErr: true,
		},
		{
			name:    "no reply",
			edit:    func(h nats.Header) { h.Del(schemas.HeaderReply) },
			check:   func(r *Request) bool { return r.ID == "abc" },
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
			name:    "port out of range",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderListener, "70000/raw") },
			check:   func(r *Request) bool { return r.Port == 0 && r.Protocol == "" && r.Listener == "70000/raw" },
			wantErr: true,
		},
		{
			name:    "listener without protocol",
			edit:    func(h nats.Header) { h.Set(schemas.HeaderListener, "9000/") },
			check:   func(r *Request) bool { return r.Port == 0 && r.Protocol == "" },
			wantErr: true,
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
			r, err := parseRequest("s", h, nil)
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
	f.Add("abc", "udpgate.reply.node1", "9000/raw", "192.0.2.7:40000", "[::1]:9000", "2026-01-02T03:04:05.1Z", "1767323045623",
		false, "", "", "", "", "", "", "", "")
	f.Add("", "", "", "", "", "", "", false, "", "", "", "", "", "", "", "")
	f.Add("x", "y", "/", "[::1]", "1.2.3.4:99999", "2026-13-01T00:00:00Z", "99999999999999999999",
		false, "", "", "", "", "", "", "", "")
	f.Add("x", "y", "65535/rpc/extra", "[fe80::1%eth0]:1", "0.0.0.0:0", "0001-01-01T00:00:00Z", "-0",
		false, "", "", "", "", "", "", "", "")
	f.Add("abc", "r", "5683/coap", "192.0.2.7:40000", "[::1]:5683", "2026-01-02T03:04:05.1Z", "1767323045623",
		true, "GET", "/a/b%2Fc/%C5%BC", "x=1&y", "0", "50", "c0ffee", "CON", "4660")
	f.Add("abc", "r", "5683/coap", "", "", "", "",
		false, "iPATCH", "/", "", "65535", "", "", "NON", "65535")
	f.Add("abc", "r", "9000/raw", "", "", "", "",
		true, "", "a//%zz", "%&&", "-1", "65536", "abc", "ACK", "-1")
	f.Fuzz(func(t *testing.T, id, reply, listener, remote, local, received, deadline string,
		coapType bool, method, path, query, contentFormat, accept, token, typ, mid string) {
		h := nats.Header{
			schemas.HeaderID:                {id},
			schemas.HeaderReply:             {reply},
			schemas.HeaderListener:          {listener},
			schemas.HeaderRemote:            {remote},
			schemas.HeaderLocal:             {local},
			schemas.HeaderTime:              {received},
			schemas.HeaderDeadline:          {deadline},
			schemas.HeaderCoAPMethod:        {method},
			schemas.HeaderCoAPPath:          {path},
			schemas.HeaderCoAPQuery:         {query},
			schemas.HeaderCoAPContentFormat: {contentFormat},
			schemas.HeaderCoAPAccept:        {accept},
			schemas.HeaderCoAPToken:         {token},
			schemas.HeaderCoAPType:          {typ},
			schemas.HeaderCoAPMessageID:     {mid},
		}
		if coapType {
			h.Set(schemas.HeaderType, schemas.TypeCoAP)
		}
		r, err := parseRequest("s", h, nil)
		if r == nil {
			t.Fatal("nil Request")
		}
		if r.ID != id || r.Listener != listener {
			t.Errorf("ID, Listener = %q, %q; want %q, %q", r.ID, r.Listener, id, listener)
		}
		if (id == "" || reply == "") && err == nil {
			t.Error("no error for a request that cannot be answered")
		}
		if r.Protocol != "" {
			p, proto, _ := strings.Cut(listener, "/")
			if n, err := strconv.ParseUint(p, 10, 16); err != nil || uint16(n) != r.Port || proto != r.Protocol {
				t.Errorf("listener %q parsed as %d/%s", listener, r.Port, r.Protocol)
			}
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
			checkCoAP(t, r.CoAP, method, path, query, contentFormat, accept, token, typ, mid)
		}
	})
}

// checkCoAP checks that c holds what the headers say, or zero values.
func checkCoAP(t *testing.T, c *CoAPRequest, method, path, query, contentFormat, accept, token, typ, mid string) {
	t.Helper()
	if c.Method != method {
		t.Errorf("Method = %q, want %q", c.Method, method)
	}
	if c.Path != "" {
		if c.Path != "/"+strings.Join(c.Segments, "/") {
			t.Errorf("Path %q is not the joined Segments %q", c.Path, c.Segments)
		}
		if want, err := url.PathUnescape(path); err != nil || c.Path != want {
			t.Errorf("path %q parsed as %q", path, c.Path)
		}
	} else if c.Segments != nil {
		t.Errorf("Segments = %q without a Path", c.Segments)
	}
	if c.Query != nil && len(c.Query) != strings.Count(query, "&")+1 {
		t.Errorf("query %q parsed as %q", query, c.Query)
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
	if c.Type != "" && c.Type != typ || c.Type == "" && (typ == "CON" || typ == "NON") {
		t.Errorf("type %q parsed as %q", typ, c.Type)
	}
	if n, err := strconv.ParseUint(mid, 10, 16); err == nil && c.MessageID != uint16(n) {
		t.Errorf("message id %q parsed as %d", mid, c.MessageID)
	}
	if len(c.Token) > 0 && !strings.EqualFold(hex.EncodeToString(c.Token), token) {
		t.Errorf("token %q parsed as %x", token, c.Token)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	h := nats.Header{
		schemas.HeaderSpecVersion: {schemas.SpecVersion},
		schemas.HeaderCEID:        {"0194f3b6c1d27a4e9b1f2c3d4e5f6a7b"},
		schemas.HeaderSource:      {"udpgate://node1/9000/raw"},
		schemas.HeaderType:        {schemas.TypeRaw},
		schemas.HeaderTime:        {"2026-01-02T03:04:05.123456789Z"},
		schemas.HeaderID:          {"0194f3b6c1d27a4e9b1f2c3d4e5f6a7b"},
		schemas.HeaderReply:       {"udpgate.reply.node1"},
		schemas.HeaderListener:    {"9000/raw"},
		schemas.HeaderRemote:      {"192.0.2.7:40000"},
		schemas.HeaderLocal:       {"127.0.0.1:9000"},
		schemas.HeaderDeadline:    {"1767323045623"},
	}
	body := []byte("ping")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRequest("udpgate.in.9000", h, body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseRequestCoAP(b *testing.B) {
	h := nats.Header{
		schemas.HeaderSpecVersion:   {schemas.SpecVersion},
		schemas.HeaderCEID:          {"0194f3b6c1d27a4e9b1f2c3d4e5f6a7b"},
		schemas.HeaderSource:        {"udpgate://node1/5683/coap"},
		schemas.HeaderType:          {schemas.TypeCoAP},
		schemas.HeaderTime:          {"2026-01-02T03:04:05.123456789Z"},
		schemas.HeaderID:            {"0194f3b6c1d27a4e9b1f2c3d4e5f6a7b"},
		schemas.HeaderReply:         {"udpgate.reply.node1"},
		schemas.HeaderListener:      {"5683/coap"},
		schemas.HeaderRemote:        {"192.0.2.7:40000"},
		schemas.HeaderLocal:         {"127.0.0.1:5683"},
		schemas.HeaderDeadline:      {"1767323045623"},
		schemas.HeaderCoAPMethod:    {"GET"},
		schemas.HeaderCoAPPath:      {"/sensors/temp%20C"},
		schemas.HeaderCoAPQuery:     {"unit=C"},
		schemas.HeaderCoAPAccept:    {"50"},
		schemas.HeaderCoAPToken:     {"c0ffee01"},
		schemas.HeaderCoAPType:      {"CON"},
		schemas.HeaderCoAPMessageID: {"4660"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseRequest("udpgate.in.5683.GET.sensors.temp~20C", h, nil); err != nil {
			b.Fatal(err)
		}
	}
}
