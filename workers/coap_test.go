package workers

import (
	"encoding/base64"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// datagramHead returns the udpgate-datagram-head of a CoAP request: the
// header (version 1, type typ, code GET, message id mid) and token, in
// base64. The options are left out: the SDK reads only the header and the
// token.
func datagramHead(typ byte, mid uint16, token []byte) string {
	head := append([]byte{1<<6 | typ<<4 | byte(len(token)), 0x01, byte(mid >> 8), byte(mid)}, token...)
	return base64.StdEncoding.EncodeToString(head)
}

func TestParseCoAP(t *testing.T) {
	// coap returns the headers of a CoAP request, with kv as extra header
	// pairs; an empty value deletes the header.
	coap := func(kv ...string) nats.Header {
		h := nats.Header{
			schemas.HeaderID:           {"abc"},
			schemas.HeaderReply:        {"udpgate.reply.node1.abc"},
			schemas.HeaderSource:       {"udpgate://node1/5683/coap"},
			schemas.HeaderType:         {schemas.TypeCoAP},
			schemas.HeaderCoAPRequest:  {"GET /time"},
			schemas.HeaderDatagramHead: {datagramHead(0, 0x1234, []byte{0xc0, 0xff, 0xee})},
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				h.Del(kv[i])
			} else {
				h.Set(kv[i], kv[i+1])
			}
		}
		return h
	}
	// want returns the CoAPRequest of coap(), changed by edit.
	want := func(edit func(*CoAPRequest)) *CoAPRequest {
		c := &CoAPRequest{
			Method: "GET", Path: "/time", Segments: []string{"time"},
			ContentFormat: -1, Accept: -1, Observe: -1,
			Token: []byte{0xc0, 0xff, 0xee}, Type: "CON", MessageID: 0x1234,
		}
		edit(c)
		return c
	}
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name    string
		header  nats.Header
		want    *CoAPRequest
		wantErr bool
	}{
		{"complete", coap(), want(func(*CoAPRequest) {}), false},
		{
			name: "all options",
			header: coap(schemas.HeaderCoAPRequest, "iPATCH /a/b%2Fc/%C5%BC%C3%B3%C5%82w/+?x=1&y%3D%262&&z",
				schemas.HeaderCoAPContentFormat, "50", schemas.HeaderCoAPAccept, "65535",
				schemas.HeaderDatagramHead, datagramHead(1, 0, nil)),
			want: want(func(c *CoAPRequest) {
				c.Method, c.Type, c.MessageID, c.Token = "iPATCH", "NON", 0, []byte{}
				c.Path, c.Segments = "/a/b/c/żółw/+", []string{"a", "b/c", "żółw", "+"}
				c.Query = []string{"x=1", "y=&2", "", "z"}
				c.ContentFormat, c.Accept = 50, 65535
			}),
		},
		{
			name:   "content-format 0",
			header: coap(schemas.HeaderCoAPContentFormat, "0"),
			want:   want(func(c *CoAPRequest) { c.ContentFormat = 0 }),
		},
		{
			name:   "root",
			header: coap(schemas.HeaderCoAPRequest, "GET /"),
			want:   want(func(c *CoAPRequest) { c.Path, c.Segments = "/", nil }),
		},
		{
			name:   "root with query",
			header: coap(schemas.HeaderCoAPRequest, "GET /?a"),
			want:   want(func(c *CoAPRequest) { c.Path, c.Segments, c.Query = "/", nil, []string{"a"} }),
		},
		{
			name:   "empty segments",
			header: coap(schemas.HeaderCoAPRequest, "GET /a//"),
			want:   want(func(c *CoAPRequest) { c.Path, c.Segments = "/a//", []string{"a", "", ""} }),
		},
		{
			name:   "8-byte token",
			header: coap(schemas.HeaderDatagramHead, datagramHead(0, 1, []byte("12345678"))),
			want:   want(func(c *CoAPRequest) { c.Token, c.MessageID = []byte("12345678"), 1 }),
		},
		{
			name: "head with options and payload marker",
			header: coap(schemas.HeaderDatagramHead,
				b64([]byte{0x41, 0x01, 0x12, 0x34, 0xc0, 0xb4, 't', 'i', 'm', 'e', 0xff})),
			want: want(func(c *CoAPRequest) { c.Token = []byte{0xc0} }),
		},
		{
			name:   "reassembled Block1 upload: no head",
			header: coap(schemas.HeaderDatagramHead, ""),
			want:   want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
		},
		{
			name:   "ce-type alone makes it CoAP",
			header: coap(schemas.HeaderSource, ""),
			want:   want(func(*CoAPRequest) {}),
		},
		{
			name:   "coap listener alone makes it CoAP",
			header: coap(schemas.HeaderType, ""),
			want:   want(func(*CoAPRequest) {}),
		},
		{
			name:   "not CoAP",
			header: coap(schemas.HeaderType, schemas.TypeRaw, schemas.HeaderSource, "udpgate://node1/9000/raw"),
			want:   nil,
		},
		{
			name:    "no CoAP headers",
			header:  coap(schemas.HeaderCoAPRequest, "", schemas.HeaderDatagramHead, ""),
			want:    &CoAPRequest{ContentFormat: -1, Accept: -1, Observe: -1},
			wantErr: true,
		},
		{
			name:    "no method",
			header:  coap(schemas.HeaderCoAPRequest, "/time"),
			want:    want(func(c *CoAPRequest) { c.Method, c.Path, c.Segments = "", "", nil }),
			wantErr: true,
		},
		{
			name:    "empty method",
			header:  coap(schemas.HeaderCoAPRequest, " /time"),
			want:    want(func(c *CoAPRequest) { c.Method, c.Path, c.Segments = "", "", nil }),
			wantErr: true,
		},
		{
			name:    "path without slash",
			header:  coap(schemas.HeaderCoAPRequest, "GET time"),
			want:    want(func(c *CoAPRequest) { c.Method, c.Path, c.Segments = "", "", nil }),
			wantErr: true,
		},
		{
			name:    "bad escape in path",
			header:  coap(schemas.HeaderCoAPRequest, "GET /a/%zz"),
			want:    want(func(c *CoAPRequest) { c.Method, c.Path, c.Segments = "", "", nil }),
			wantErr: true,
		},
		{
			name:    "bad escape in query",
			header:  coap(schemas.HeaderCoAPRequest, "GET /time?a&%4"),
			want:    want(func(c *CoAPRequest) { c.Method, c.Path, c.Segments = "", "", nil }),
			wantErr: true,
		},
		{
			name:    "content-format not a number",
			header:  coap(schemas.HeaderCoAPContentFormat, "text/plain"),
			want:    want(func(*CoAPRequest) {}),
			wantErr: true,
		},
		{
			name:    "content-format too large",
			header:  coap(schemas.HeaderCoAPContentFormat, "65536"),
			want:    want(func(*CoAPRequest) {}),
			wantErr: true,
		},
		{
			name:    "negative accept",
			header:  coap(schemas.HeaderCoAPAccept, "-1"),
			want:    want(func(*CoAPRequest) {}),
			wantErr: true,
		},
		{
			name:    "head not base64",
			header:  coap(schemas.HeaderDatagramHead, "QQ=!"),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "head too short",
			header:  coap(schemas.HeaderDatagramHead, b64([]byte{0x40, 0x01, 0x00})),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "head shorter than its token",
			header:  coap(schemas.HeaderDatagramHead, b64([]byte{0x44, 0x01, 0x00, 0x01, 0xaa})),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "token length 9",
			header:  coap(schemas.HeaderDatagramHead, datagramHead(0, 1, []byte("123456789"))),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "version 2",
			header:  coap(schemas.HeaderDatagramHead, b64([]byte{0x80, 0x01, 0x00, 0x01})),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "ACK type",
			header:  coap(schemas.HeaderDatagramHead, datagramHead(2, 1, nil)),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
		{
			name:    "RST type",
			header:  coap(schemas.HeaderDatagramHead, datagramHead(3, 1, nil)),
			want:    want(func(c *CoAPRequest) { c.Token, c.Type, c.MessageID = nil, "", 0 }),
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseRequest("s", "", tt.header, nil)
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, want error %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(r.CoAP, tt.want) {
				t.Errorf("CoAP = %+v\nwant   %+v", r.CoAP, tt.want)
			}
		})
	}
}

// TestLocationRoundTrip checks that the location headers a worker writes
// decode, as the request headers do, to what it wrote.
func TestLocationRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		parts []string
		want  []string // what the headers parse as; nil for none
	}{
		{"plain", []string{"items", "7"}, nil},
		{"reserved", []string{"a/b", "c&d", "e+f", "100%", "?#[]", "x y"}, nil},
		{"kept", []string{"a=b", "-._~!$'()*,;:@"}, nil},
		{"utf-8", []string{"żółw", "\x00\xff"}, nil},
		// The headers cannot tell one empty option from none.
		{"one empty", []string{""}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.parts
			if tt.want != nil {
				want = tt.want
			}
			w := NewCoAPResponse(&response{})
			w.SetLocationPath(tt.parts...)
			w.SetLocationQuery(tt.parts...)
			path := w.Header().Get(schemas.HeaderCoAPLocationPath)
			query := w.Header().Get(schemas.HeaderCoAPLocationQuery)
			line := "GET " + path
			if query != "" {
				line += "?" + query
			}
			req, _ := parseCoAP(nats.Header{schemas.HeaderCoAPRequest: {line}})
			if len(req.Segments) != len(want) || len(want) > 0 && !reflect.DeepEqual(req.Segments, want) {
				t.Errorf("location path %q parses as %q; want %q", path, req.Segments, want)
			}
			if len(req.Query) != len(want) || len(want) > 0 && !reflect.DeepEqual(req.Query, want) {
				t.Errorf("location query %q parses as %q; want %q", query, req.Query, want)
			}
		})
	}
}

func TestParseCode(t *testing.T) {
	tests := []struct {
		s  string
		ok bool
	}{
		{"2.05", true}, {"2.01", true}, {"2.31", true}, {"4.00", true}, {"4.29", true}, {"5.05", true}, {"5.31", true},
		{"", false}, {"205", false}, {"2.5", false}, {"2.055", false}, {"2,05", false}, {"0.01", false},
		{"1.00", false}, {"3.00", false}, {"6.00", false}, {"7.00", false}, {"2.32", false}, {"4.99", false},
		{"x.05", false}, {"2.x5", false}, {"2.0x", false}, {"+.05", false},
	}
	for _, tt := range tests {
		t.Run(tt.s, func(t *testing.T) {
			c, err := ParseCode(tt.s)
			if (err == nil) != tt.ok || tt.ok && c != Code(tt.s) {
				t.Errorf("ParseCode(%q) = %q, %v; want ok %v", tt.s, c, err, tt.ok)
			}
		})
	}
	for _, c := range []Code{Created, Deleted, Valid, Changed, Content, BadRequest, Unauthorized, BadOption,
		Forbidden, NotFound, MethodNotAllowed, NotAcceptable, PreconditionFailed, RequestEntityTooLarge,
		UnsupportedContentFormat, InternalServerError, NotImplemented, BadGateway, ServiceUnavailable,
		GatewayTimeout, ProxyingNotSupported} {
		if _, err := ParseCode(string(c)); err != nil {
			t.Errorf("constant %q: %v", c, err)
		}
	}
	if Content != schemas.CoAPDefaultCode || InternalServerError != schemas.CoAPInternalError {
		t.Errorf("Content, InternalServerError = %q, %q; want the gateway's %q, %q",
			Content, InternalServerError, schemas.CoAPDefaultCode, schemas.CoAPInternalError)
	}
}

func TestCoAPResponse(t *testing.T) {
	tests := []struct {
		name  string
		write func(CoAPResponse)
		want  nats.Header
	}{
		{"nothing", func(CoAPResponse) {}, nats.Header{}},
		{"code", func(w CoAPResponse) { w.SetCode(Created) }, nats.Header{schemas.HeaderCoAPCode: {"2.01"}}},
		{"code string", func(w CoAPResponse) { w.SetCode("4.29") }, nats.Header{schemas.HeaderCoAPCode: {"4.29"}}},
		{"code set twice", func(w CoAPResponse) { w.SetCode(Created); w.SetCode(Changed) }, nats.Header{schemas.HeaderCoAPCode: {"2.04"}}},
		{"content-format 0", func(w CoAPResponse) { w.SetContentFormat(0) }, nats.Header{schemas.HeaderCoAPContentFormat: {"0"}}},
		{"content-format max", func(w CoAPResponse) { w.SetContentFormat(65535) }, nats.Header{schemas.HeaderCoAPContentFormat: {"65535"}}},
		{"content-format removed", func(w CoAPResponse) { w.SetContentFormat(50); w.SetContentFormat(-1) }, nats.Header{}},
		{"max-age", func(w CoAPResponse) { w.SetMaxAge(90*time.Second + 999*time.Millisecond) }, nats.Header{schemas.HeaderCoAPMaxAge: {"90"}}},
		{"max-age zero", func(w CoAPResponse) { w.SetMaxAge(0) }, nats.Header{schemas.HeaderCoAPMaxAge: {"0"}}},
		{"max-age negative", func(w CoAPResponse) { w.SetMaxAge(-time.Hour) }, nats.Header{schemas.HeaderCoAPMaxAge: {"0"}}},
		{"max-age huge", func(w CoAPResponse) { w.SetMaxAge(200 * 365 * 24 * time.Hour) }, nats.Header{schemas.HeaderCoAPMaxAge: {"4294967295"}}},
		{"etag", func(w CoAPResponse) { w.SetETag([]byte{0xAB, 0x01}) }, nats.Header{schemas.HeaderCoAPETag: {"ab01"}}},
		{"etag 8 bytes", func(w CoAPResponse) { w.SetETag([]byte("12345678")) }, nats.Header{schemas.HeaderCoAPETag: {"3132333435363738"}}},
		{"location", func(w CoAPResponse) { w.SetLocationPath("items", "a b/c"); w.SetLocationQuery("v=2", "x&y") },
			nats.Header{schemas.HeaderCoAPLocationPath: {"/items/a%20b%2Fc"}, schemas.HeaderCoAPLocationQuery: {"v=2&x%26y"}}},
		{"location removed", func(w CoAPResponse) {
			w.SetLocationPath("a")
			w.SetLocationQuery("b")
			w.SetLocationPath()
			w.SetLocationQuery()
		}, nats.Header{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			w := NewCoAPResponse(&r)
			tt.write(w)
			if got := w.Header(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("headers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCoAPResponsePanics(t *testing.T) {
	tests := []struct {
		name  string
		write func(CoAPResponse)
		want  string
	}{
		{"bad code", func(w CoAPResponse) { w.SetCode("2.5") }, `workers: CoAP response code "2.5": want c.dd`},
		{"request code", func(w CoAPResponse) { w.SetCode("0.01") }, `workers: CoAP response code "0.01": class must be 2, 4 or 5`},
		{"detail", func(w CoAPResponse) { w.SetCode("4.32") }, `workers: CoAP response code "4.32": detail must be at most 31`},
		{"content-format", func(w CoAPResponse) { w.SetContentFormat(65536) }, "workers: CoAP Content-Format 65536 above 65535"},
		{"empty etag", func(w CoAPResponse) { w.SetETag(nil) }, "workers: CoAP ETag of 0 bytes: want 1 to 8"},
		{"long etag", func(w CoAPResponse) { w.SetETag(make([]byte, 9)) }, "workers: CoAP ETag of 9 bytes: want 1 to 8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			defer func() {
				if got := fmt.Sprint(recover()); got != tt.want {
					t.Errorf("panic = %q, want %q", got, tt.want)
				}
				if r.answered() {
					t.Errorf("a panicking setter wrote headers %v", r.header)
				}
			}()
			tt.write(NewCoAPResponse(&r))
		})
	}
}

func TestCoAPResponseWrite(t *testing.T) {
	var r response
	w := NewCoAPResponse(&r)
	w.SetContentFormat(0)
	if n, err := w.Write([]byte("hi")); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if !r.answered() || string(r.body) != "hi" || r.header.Get(schemas.HeaderCoAPContentFormat) != "0" {
		t.Errorf("response = %v %q", r.header, r.body)
	}
}
