package schemas

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

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

// DefaultObserveBucket is the JetStream key-value bucket where gateway
// nodes keep their Observe registrations (UDPGATE_OBSERVE_BUCKET).
const DefaultObserveBucket = "udpgate_observe"

// The keys of the Observe bucket are PORT.NODE.RESOURCE.REGISTRATION:
// the coap listener's port in decimal, then the gateway node, the
// resource's notify subject (NotifySubject) and the registration (the
// client's address and token, see ObserveKey), each encoded in base64url
// without padding (RFC 4648 §5), as KV keys allow only
// [-/_=.a-zA-Z0-9]. The tokens sit at fixed positions, so that a filter
// picks a port's, a node's or a resource's registrations.
var observeEncoding = base64.RawURLEncoding

// ObserveKey returns the key, in the Observe bucket, of the registration
// of peer (ADDR:PORT, as netip.AddrPort.String writes it) with token on
// the resource whose notify subject is subject, held by node on port.
// REGISTRATION encodes peer, a space, then the token's bytes.
func ObserveKey(port uint16, node, subject, peer string, token []byte) string {
	reg := append(append([]byte(peer), ' '), token...)
	return strconv.FormatUint(uint64(port), 10) + "." + observeEncoding.EncodeToString([]byte(node)) + "." +
		observeEncoding.EncodeToString([]byte(subject)) + "." + observeEncoding.EncodeToString(reg)
}

// ObserveResourceFilter returns the key filter of every registration of
// the resource whose notify subject is subject on port, across nodes:
// PORT.*.RESOURCE.*. A worker asks whether a resource has observers by
// listing the keys it matches, stopping at the first.
func ObserveResourceFilter(port uint16, subject string) string {
	return strconv.FormatUint(uint64(port), 10) + ".*." + observeEncoding.EncodeToString([]byte(subject)) + ".*"
}

// ObserveNodeFilter returns the key filter of the registrations node
// holds on port: PORT.NODE.*.*.
func ObserveNodeFilter(port uint16, node string) string {
	return strconv.FormatUint(uint64(port), 10) + "." + observeEncoding.EncodeToString([]byte(node)) + ".*.*"
}

// ParseObserveKey returns the port, node and notify subject of a key of
// the Observe bucket; ok is false for a key ObserveKey cannot have made.
func ParseObserveKey(key string) (port uint16, node, subject string, ok bool) {
	p, rest, _ := strings.Cut(key, ".")
	n, rest, _ := strings.Cut(rest, ".")
	s, reg, _ := strings.Cut(rest, ".")
	v, err := strconv.ParseUint(p, 10, 16)
	if err != nil || reg == "" || strings.Contains(reg, ".") {
		return 0, "", "", false
	}
	nb, err1 := observeEncoding.DecodeString(n)
	sb, err2 := observeEncoding.DecodeString(s)
	if err1 != nil || err2 != nil {
		return 0, "", "", false
	}
	return uint16(v), string(nb), string(sb), true
}

// ObserveRegistration is the value of a key of the Observe bucket, JSON:
// what a gateway node restarted on the same address needs to go on
// notifying the observer.
type ObserveRegistration struct {
	Node string `json:"node"`
	Port uint16 `json:"port"`
	// Subject is the resource's notify subject, and Resource its path
	// tokens after PREFIX.notify.PORT, joined by "." ("" for "/").
	Subject  string `json:"subject"`
	Resource string `json:"resource"`
	Peer     string `json:"peer"`  // the client, ip:port ([ip6]:port)
	Token    string `json:"token"` // hex
	// Op is the registration's request line (method and URI): Block2
	// follow-ups of a notification ask for it.
	Op string `json:"op"`
	// Local is the address the client sent the registration to, and
	// IfIndex the interface it arrived on (0: unknown): notifications
	// leave from there.
	Local   string `json:"local"`
	IfIndex int    `json:"if_index,omitempty"`
	// SZX is the block size exponent of its notifications (RFC 7959).
	SZX        uint8     `json:"szx"`
	Registered time.Time `json:"registered"`
}
