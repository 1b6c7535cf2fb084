package schemas

import "fmt"

// CloudEvents type of CoAP request messages.
const TypeCoAP = "io.udpgate.coap"

// CoAP request headers, set by the gateway on requests from coap listeners.
const (
	// HeaderCoAPRequest is the request line: the method, a space, the
	// path ("/" then the Uri-Path segments joined by "/", each
	// percent-encoded as RFC 3986 does), and, if the request has Uri-Query
	// options, "?" and the options joined by "&", each percent-encoded
	// (name and value separately): "GET /sensors/a%20b?unit=C&verbose".
	HeaderCoAPRequest       = "udpgate-coap-request"
	HeaderCoAPContentFormat = "udpgate-coap-content-format" // decimal; absent if none
	HeaderCoAPAccept        = "udpgate-coap-accept"         // decimal; absent if none
	// HeaderDatagramHead holds, in standard base64, the bytes of the request
	// datagram before its payload: CoAP header (type, message id), token,
	// options and the payload marker if a payload follows. Head plus body
	// is the datagram byte for byte. Absent for a request reassembled from
	// Block1 transfers.
	HeaderDatagramHead = "udpgate-datagram-head"
)

// CoAP reply headers, read by the gateway on replies to CoAP requests. All
// are optional.
const (
	HeaderCoAPCode          = "udpgate-coap-code"           // response code "c.dd", e.g. "2.05"; default CoAPDefaultCode
	HeaderCoAPMaxAge        = "udpgate-coap-max-age"        // decimal seconds
	HeaderCoAPETag          = "udpgate-coap-etag"           // hex, 1 to 8 bytes
	HeaderCoAPLocationPath  = "udpgate-coap-location-path"  // "/" + segments joined by "/", each percent-encoded, as in HeaderCoAPRequest
	HeaderCoAPLocationQuery = "udpgate-coap-location-query" // options joined by "&", each percent-encoded, as in HeaderCoAPRequest
	// A reply's HeaderCoAPContentFormat sets the response's Content-Format.
)

// CoAPDefaultCode is the response code of a reply without HeaderCoAPCode:
// 2.05 Content.
const CoAPDefaultCode = "2.05"

// CoAP response codes the gateway itself sends.
const (
	CoAPBadOption          = "4.02" // an unrecognised critical option
	CoAPRequestTooLarge    = "4.13" // a Block1 upload beyond the gateway's limit
	CoAPInternalError      = "5.00" // the worker replied with StatusError
	CoAPServiceUnavailable = "5.03" // NATS unavailable: the request could not be published
	CoAPGatewayTimeout     = "5.04" // no reply before the deadline
	CoAPProxyingNotSupp    = "5.05" // Proxy-Uri or Proxy-Scheme
)

// CoAPSubject returns the request subject of a CoAP request on port:
// PREFIX.in.PORT.METHOD followed by one token per Uri-Path segment, each
// escaped with EscapeToken. A request for "/" has no path tokens.
func CoAPSubject(prefix string, port uint16, method string, segments []string) string {
	n := len(prefix) + 12 + len(method)
	for _, s := range segments {
		n += EscapedLen(s) + 1
	}
	return string(AppendCoAPSubject(make([]byte, 0, n), prefix, port, method, segments))
}

// AppendCoAPSubject appends CoAPSubject(prefix, port, method, segments) to
// dst.
func AppendCoAPSubject(dst []byte, prefix string, port uint16, method string, segments []string) []byte {
	dst = AppendInSubject(dst, prefix, port)
	dst = append(dst, '.')
	dst = append(dst, method...)
	for _, s := range segments {
		dst = append(dst, '.')
		dst = AppendEscapedToken(dst, s)
	}
	return dst
}

// ParseCoAPCode parses a response code as HeaderCoAPCode carries it,
// "c.dd" (RFC 7252 §12.1): class 2, 4 or 5, a dot, and a two-digit detail
// from 00 to 31.
func ParseCoAPCode(s string) (class, detail uint8, err error) {
	if len(s) != 4 || s[1] != '.' || !isDigit(s[2]) || !isDigit(s[3]) {
		return 0, 0, fmt.Errorf("CoAP response code %q: want c.dd", s)
	}
	if s[0] != '2' && s[0] != '4' && s[0] != '5' {
		return 0, 0, fmt.Errorf("CoAP response code %q: class must be 2, 4 or 5", s)
	}
	if detail = (s[2]-'0')*10 + s[3] - '0'; detail > 31 {
		return 0, 0, fmt.Errorf("CoAP response code %q: detail must be at most 31", s)
	}
	return s[0] - '0', detail, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
