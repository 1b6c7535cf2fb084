package schemas

import "strconv"

// CoAP Observe (RFC 7641): the headers and subjects of registrations and
// notifications (schemas/README.md, "CoAP Observe").
const (
	// HeaderCoAPObserve, on a request, is the value of its Observe
	// option when it has one: "0" registers, "1" deregisters. On a reply
	// to a request with Observe 0, any non-empty value accepts the
	// registration: a 2.xx reply with it keeps the client as an observer
	// of the resource, and the response carries an Observe option.
	HeaderCoAPObserve = "udpgate-coap-observe"
	// HeaderCoAPObservers is the gateway's answer to a notification
	// published as a NATS request: how many observers it notified,
	// decimal.
	HeaderCoAPObservers = "udpgate-coap-observers"
)

// Values of HeaderCoAPObserve on a request.
const (
	CoAPObserveRegister   = "0"
	CoAPObserveDeregister = "1"
)

// NotifySubject returns the subject a worker publishes a new
// representation of the resource with Uri-Path segments on a coap
// listener's port to: PREFIX.notify.PORT followed by one token per
// segment, each escaped with EscapeToken, as in CoAPSubject. "/" has no
// path tokens.
func NotifySubject(prefix string, port uint16, segments []string) string {
	n := len(prefix) + 14
	for _, s := range segments {
		n += EscapedLen(s) + 1
	}
	return string(AppendNotifySubject(make([]byte, 0, n), prefix, port, segments))
}

// AppendNotifySubject appends NotifySubject(prefix, port, segments) to
// dst.
func AppendNotifySubject(dst []byte, prefix string, port uint16, segments []string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, ".notify."...)
	dst = strconv.AppendUint(dst, uint64(port), 10)
	for _, s := range segments {
		dst = append(dst, '.')
		dst = AppendEscapedToken(dst, s)
	}
	return dst
}

// NotifyWildcard returns the subject filter that covers the notify
// subjects of the resources on port below "/": PREFIX.notify.PORT.>. A
// gateway subscribes to it and to NotifySubject(prefix, port, nil).
func NotifyWildcard(prefix string, port uint16) string {
	return prefix + ".notify." + strconv.FormatUint(uint64(port), 10) + ".>"
}
