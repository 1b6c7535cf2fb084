package workers

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// CoAPRequest is the CoAP part of a request from a coap listener, parsed
// from the udpgate-coap-* headers and the datagram head. A header that is
// missing or malformed leaves its field zero, or -1 for ContentFormat and
// Accept.
type CoAPRequest struct {
	// Method is the request method, for example "GET" or "iPATCH".
	Method string
	// Path is "/" followed by Segments joined by "/"; "/" for a request
	// without Uri-Path (the header cannot tell it from one empty Uri-Path
	// option), empty if the request line is missing or malformed. A
	// segment may itself contain "/": Segments is exact, Path is for
	// reading.
	Path string
	// Segments are the Uri-Path options, percent-decoded.
	Segments []string
	// Query are the Uri-Query options, percent-decoded, for example
	// ["a=1", "b"]; nil if there are none.
	Query []string
	// ContentFormat is the request's Content-Format, 0 to 65535, and Accept
	// the format the client asks for; -1 if the option is absent.
	ContentFormat, Accept int
	// Token, Type ("CON" or "NON") and MessageID come from the datagram
	// head (udpgate-datagram-head); they are zero for a request
	// reassembled from a Block1 upload, which has none. The gateway runs
	// the messaging layer: a worker rarely needs them.
	Token     []byte
	Type      string
	MessageID uint16
	// Observe is the request's Observe option (RFC 7641): 0 registers
	// the client as an observer of the resource, 1 deregisters it; -1 if
	// the option is absent. A Mux route made with Observable accepts
	// registrations; see Notifier for the notifications.
	Observe int
}

// isCoAP reports whether a request message comes from a coap listener.
func isCoAP(h nats.Header, protocol string) bool {
	return protocol == schemas.ProtocolCoAP || h.Get(schemas.HeaderType) == schemas.TypeCoAP
}

// parseCoAP builds the CoAPRequest of a request message. Like parseRequest
// it never fails; it returns one error per missing or malformed header.
func parseCoAP(h nats.Header) (*CoAPRequest, []error) {
	c := &CoAPRequest{ContentFormat: -1, Accept: -1, Observe: -1}
	var errs []error
	bad := func(key, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("missing %s", key))
		} else {
			errs = append(errs, fmt.Errorf("bad %s %q", key, v))
		}
	}
	line := h.Get(schemas.HeaderCoAPRequest)
	method, uri, ok := strings.Cut(line, " ")
	path, query, hasQuery := strings.Cut(uri, "?")
	segs, pathOK := parsePath(path)
	var q []string
	if hasQuery {
		q, ok = unescapeAll(strings.Split(query, "&"))
	}
	if ok && pathOK && method != "" {
		c.Method, c.Path, c.Segments, c.Query = method, "/"+strings.Join(segs, "/"), segs, q
	} else {
		bad(schemas.HeaderCoAPRequest, line)
	}
	for _, o := range []struct {
		key string
		dst *int
	}{
		{schemas.HeaderCoAPContentFormat, &c.ContentFormat},
		{schemas.HeaderCoAPAccept, &c.Accept},
		{schemas.HeaderCoAPObserve, &c.Observe},
	} {
		v := h.Get(o.key)
		if v == "" {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 16); err == nil {
			*o.dst = int(n)
		} else {
			bad(o.key, v)
		}
	}
	if v := h.Get(schemas.HeaderDatagramHead); v != "" {
		head, err := base64.StdEncoding.DecodeString(v)
		// Version 1, a request's type (CON or NON: the gateway never
		// forwards an ACK or a RST) and a token of at most 8 bytes.
		tkl := 0
		if len(head) > 0 {
			tkl = int(head[0] & 0x0f)
		}
		if err == nil && len(head) >= 4+tkl && head[0]>>6 == 1 && head[0]>>4&3 <= 1 && tkl <= 8 {
			c.Type = "CON"
			if head[0]>>4&3 == 1 {
				c.Type = "NON"
			}
			c.MessageID = uint16(head[2])<<8 | uint16(head[3])
			c.Token = head[4 : 4+tkl]
		} else {
			bad(schemas.HeaderDatagramHead, v)
		}
	}
	return c, errs
}

// parsePath splits a path header, "/" followed by percent-encoded segments
// joined by "/", into its decoded segments. "/" has none.
func parsePath(v string) ([]string, bool) {
	rest, ok := strings.CutPrefix(v, "/")
	if !ok {
		return nil, false
	}
	if rest == "" {
		return nil, true
	}
	return unescapeAll(strings.Split(rest, "/"))
}

// unescapeAll percent-decodes each of parts in place.
func unescapeAll(parts []string) ([]string, bool) {
	for i, p := range parts {
		s, err := url.PathUnescape(p)
		if err != nil {
			return nil, false
		}
		parts[i] = s
	}
	return parts, true
}

// Code is a CoAP response code, "c.dd" as in RFC 7252: class 2 (success),
// 4 (client error) or 5 (server error), a dot and a two-digit detail from
// 00 to 31. The constants are the codes RFC 7252 defines; any other valid
// code, such as "4.29", can be written as a Code too.
type Code string

// Response codes of RFC 7252, section 12.1.2.
const (
	Created                  Code = "2.01"
	Deleted                  Code = "2.02"
	Valid                    Code = "2.03"
	Changed                  Code = "2.04"
	Content                  Code = "2.05" // the default: schemas.CoAPDefaultCode
	BadRequest               Code = "4.00"
	Unauthorized             Code = "4.01"
	BadOption                Code = "4.02"
	Forbidden                Code = "4.03"
	NotFound                 Code = "4.04"
	MethodNotAllowed         Code = "4.05"
	NotAcceptable            Code = "4.06"
	PreconditionFailed       Code = "4.12"
	RequestEntityTooLarge    Code = "4.13"
	UnsupportedContentFormat Code = "4.15"
	InternalServerError      Code = "5.00"
	NotImplemented           Code = "5.01"
	BadGateway               Code = "5.02"
	ServiceUnavailable       Code = "5.03"
	GatewayTimeout           Code = "5.04"
	ProxyingNotSupported     Code = "5.05"
)

// ParseCode returns s as a Code if it is a valid response code.
func ParseCode(s string) (Code, error) {
	if _, _, err := schemas.ParseCoAPCode(s); err != nil {
		return "", fmt.Errorf("workers: %w", err)
	}
	return Code(s), nil
}

// CoAPResponse is a ResponseWriter that also sets the CoAP options of the
// reply to a CoAP request, as the udpgate-coap-* reply headers. A reply that
// sets none of them is a 2.05 Content without options. Like the
// ResponseWriter it wraps, it is not safe for concurrent use.
//
// The setters panic on a value that no CoAP message can carry, as
// net/http's WriteHeader does on an invalid status: such a value is a bug in
// the handler, and the Server turns the panic into an error reply (5.00)
// and an Error log.
type CoAPResponse struct {
	ResponseWriter
}

// NewCoAPResponse returns a CoAPResponse writing to w.
func NewCoAPResponse(w ResponseWriter) CoAPResponse {
	return CoAPResponse{w}
}

// SetCode sets the response code. It panics if c is not a valid Code; use
// ParseCode to check a code that comes from outside the program.
func (w CoAPResponse) SetCode(c Code) {
	if _, err := ParseCode(string(c)); err != nil {
		panic(err)
	}
	w.Header().Set(schemas.HeaderCoAPCode, string(c))
}

// SetContentFormat sets the Content-Format of the payload, for example 0
// for text/plain;charset=utf-8 or 50 for application/json. A negative cf
// removes it, so that a request's ContentFormat can be passed on as it is.
// It panics if cf is above 65535.
func (w CoAPResponse) SetContentFormat(cf int) {
	if cf < 0 {
		w.Header().Del(schemas.HeaderCoAPContentFormat)
		return
	}
	if cf > 0xffff {
		panic(fmt.Sprintf("workers: CoAP Content-Format %d above 65535", cf))
	}
	w.Header().Set(schemas.HeaderCoAPContentFormat, strconv.Itoa(cf))
}

// maxMaxAge is the largest Max-Age a CoAP option holds.
const maxMaxAge = 1<<32 - 1

// SetMaxAge sets Max-Age, how long the response may be cached, in whole
// seconds: d is truncated to the second and clamped to 0 .. 2³²-1 s.
func (w CoAPResponse) SetMaxAge(d time.Duration) {
	s := max(int64(d/time.Second), 0)
	w.Header().Set(schemas.HeaderCoAPMaxAge, strconv.FormatInt(min(s, maxMaxAge), 10))
}

// SetETag sets the ETag option. It panics unless tag has 1 to 8 bytes.
func (w CoAPResponse) SetETag(tag []byte) {
	if len(tag) < 1 || len(tag) > 8 {
		panic(fmt.Sprintf("workers: CoAP ETag of %d bytes: want 1 to 8", len(tag)))
	}
	w.Header().Set(schemas.HeaderCoAPETag, hex.EncodeToString(tag))
}

// SetLocationPath sets the Location-Path options, one per segment, for
// example ("items", "7") for the resource /items/7 that a POST created.
// Segments are given unescaped. No segments removes Location-Path.
func (w CoAPResponse) SetLocationPath(segments ...string) {
	if len(segments) == 0 {
		w.Header().Del(schemas.HeaderCoAPLocationPath)
		return
	}
	w.Header().Set(schemas.HeaderCoAPLocationPath, "/"+escapeJoin(segments, '/'))
}

// SetLocationQuery sets the Location-Query options, one per argument, for
// example ("v=2"). Options are given unescaped. No options removes
// Location-Query.
func (w CoAPResponse) SetLocationQuery(options ...string) {
	if len(options) == 0 {
		w.Header().Del(schemas.HeaderCoAPLocationQuery)
		return
	}
	w.Header().Set(schemas.HeaderCoAPLocationQuery, escapeJoin(options, '&'))
}

// escapeJoin percent-encodes each of parts and joins them with sep. Bytes
// other than RFC 3986's unreserved characters and the sub-delimiters that
// mean nothing in either header ("!$'()*,;=:@") are encoded: in particular
// '/', '&', '+', '%', space and every non-ASCII byte.
func escapeJoin(parts []string, sep byte) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(sep)
		}
		for j := 0; j < len(p); j++ {
			c := p[j]
			if plainURIByte(c) {
				b.WriteByte(c)
				continue
			}
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0x0f])
		}
	}
	return b.String()
}

func plainURIByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("-._~!$'()*,;=:@", c) >= 0
}
