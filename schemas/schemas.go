// Package schemas is udpgate's wire contract: the subjects, headers, stream
// names and statuses that cross NATS. Everything here is public: a worker in
// any language is written against these names, which schemas/README.md
// documents. The package imports nothing of udpgate's own.
package schemas

import (
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Version is the version of the wire contract that this package and
// schemas/README.md describe.
const Version = 2

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "udpgate"

// StreamIn is the default name of the JetStream stream that captures every
// request datagram. The gateway publishes each capture copy to
// CaptureSubject (PREFIX.capture.…), and the stream stores it under the
// request subject (PREFIX.in.…) by a subject transform, so that durable
// groups filter the same subjects that direct groups subscribe to, while
// a core request on PREFIX.in.… is never captured twice.
const StreamIn = "UDPGATE_IN"

// StreamReplies is the default name of the JetStream stream that records
// workers' replies (subjects PREFIX.reply.>), so that a request and its
// recorded reply can be joined by the reply subject's last token (the
// request's ce-id).
const StreamReplies = "UDPGATE_REPLIES"

// ReplyWildcard returns the subject filter that covers every reply
// subject of every node: PREFIX.reply.>.
func ReplyWildcard(prefix string) string {
	return prefix + ".reply.>"
}

// CaptureWildcard returns the subjects of the capture stream:
// PREFIX.capture.>.
func CaptureWildcard(prefix string) string {
	return prefix + ".capture.>"
}

// CaptureSubject returns the subject to which the capture copy of a request
// on subject in (PREFIX.in.…) is published: the same subject with its "in"
// token replaced by "capture". The capture stream stores it as in.
func CaptureSubject(prefix, in string) string {
	return string(AppendCaptureSubject(nil, prefix, in))
}

// AppendCaptureSubject appends CaptureSubject(prefix, in) to dst.
func AppendCaptureSubject(dst []byte, prefix, in string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, ".capture"...)
	return append(dst, in[len(prefix)+len(".in"):]...)
}

// FallbackSubject returns the subject on which the gateway publishes a
// request whose capture copy JetStream did not take (a stream electing a
// leader), for the durable groups that serve it to answer over core NATS
// in the meantime: its subject (in, PREFIX.in.…) with "fallback" for
// "in". The message carries no NATS reply subject (a publish to no
// subscriber must not answer for the exchange); the reply goes to its
// udpgate-reply header, as for any captured request.
func FallbackSubject(prefix, in string) string {
	return prefix + ".fallback" + in[len(prefix)+len(".in"):]
}

// FallbackFilter returns the subject filter that matches the fallback
// copies of the requests filter matches, and false if filter names no
// request subject (it does not start with PREFIX.in.).
func FallbackFilter(prefix, filter string) (string, bool) {
	if !strings.HasPrefix(filter, prefix+".in.") {
		return "", false
	}
	return FallbackSubject(prefix, filter), true
}

// InOfFallback returns the request subject (PREFIX.in.…) of a fallback
// subject, or false if fallback is not one (PREFIX.fallback.…).
func InOfFallback(prefix, fallback string) (string, bool) {
	rest, ok := strings.CutPrefix(fallback, prefix+".fallback.")
	if !ok {
		return "", false
	}
	return prefix + ".in." + rest, true
}

// Protocols a listener can speak.
const (
	ProtocolRaw  = "raw"
	ProtocolCoAP = "coap"
	ProtocolRPC  = "rpc"
	// ProtocolWS is a WebSocket listener: a TCP port whose messages are
	// RPC calls, published as an rpc listener's are.
	ProtocolWS = "ws"
)

// CloudEvents binary-mode headers carried by every request message.
const (
	HeaderSpecVersion = "ce-specversion" // always SpecVersion
	HeaderID          = "ce-id"          // the exchange's correlation id, opaque
	HeaderSource      = "ce-source"      // udpgate://NODE/PORT/PROTOCOL
	HeaderType        = "ce-type"        // TypeRaw, TypeCoAP or TypeRPC
	// HeaderTime is when the datagram was read, RFC 3339 UTC with
	// nanoseconds. Live requests do not carry it (the capture stream
	// stamps each message as it stores it, within milliseconds of the
	// read); imported ones (pcap import) do, with the packet's time.
	HeaderTime = "ce-time"
)

// SpecVersion is the CloudEvents version of request messages.
const SpecVersion = "1.0"

// CloudEvents types of request messages, one per protocol.
const (
	TypeRaw = "io.udpgate.raw"
)

// udpgate headers. Request messages carry all but HeaderStatus; a reply
// needs none (optionally HeaderStatus): its subject names the exchange.
// NATS headers are case-sensitive: use these constants, never retype the
// names.
const (
	HeaderRemote   = "udpgate-remote"   // client address, ip:port ([ip6]:port)
	HeaderLocal    = "udpgate-local"    // address the datagram was sent to, ip:port
	HeaderDeadline = "udpgate-deadline" // Unix time in milliseconds after which no reply is sent
	// HeaderReply is the subject to publish the reply to,
	// PREFIX.reply.NODE.ID: a direct request's NATS reply subject too,
	// and the only way a durable worker knows it (a stored message keeps
	// no reply subject).
	HeaderReply  = "udpgate-reply"
	HeaderStatus = "udpgate-status" // reply outcome, one of the Status values
	// HeaderMore, set to "1" on a reply with status ok to a raw request,
	// says that more replies follow: the gateway sends this one and keeps
	// the exchange open, until a reply without it (the last) or the
	// deadline (schemas/README.md, "Several replies to one request").
	HeaderMore = "udpgate-more"
	// HeaderReplayOf is set on requests that `udpgate replay` publishes to
	// a replay prefix: the ce-id of the captured request, which joins a
	// candidate's reply with the recorded one.
	HeaderReplayOf = "udpgate-replay-of"
)

// HeaderDTLSIdentity is the authenticated identity of a client of a coaps
// or dtls listener: its PSK identity, or the subject of its client
// certificate (RFC 2253, control characters replaced by '?'). Requests of
// other listeners do not have it.
const HeaderDTLSIdentity = "udpgate-dtls-identity"

// HeaderMulticast is the multicast group a request was sent to (an
// address without port, like 224.0.1.187 or ff02::fd), and
// HeaderBroadcast the broadcast address (like 255.255.255.255 or
// 10.0.0.255); HeaderLocal then holds that address and the port. Every
// node of the group (or link) received the request and may answer it:
// the gateway answers from its own unicast address, and a CoAP
// listener follows RFC 7252 §8.2 (NON only, errors suppressed, a random
// delay). Requests sent to the node itself have neither.
const (
	HeaderMulticast = "udpgate-multicast"
	HeaderBroadcast = "udpgate-broadcast"
)

// Reply statuses, the value of HeaderStatus on a reply. A reply without the
// header has status StatusOK.
const (
	// StatusOK: the body is the answer; the gateway sends it to the client.
	StatusOK = "ok"
	// StatusError: the worker failed. The gateway closes the exchange and
	// answers with the protocol's error form; a raw listener sends nothing.
	StatusError = "error"
)

// InSubject returns the request subject of a raw listener on port:
// PREFIX.in.PORT.
func InSubject(prefix string, port uint16) string {
	return prefix + ".in." + strconv.FormatUint(uint64(port), 10)
}

// AppendInSubject appends InSubject(prefix, port) to dst.
func AppendInSubject(dst []byte, prefix string, port uint16) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, ".in."...)
	return strconv.AppendUint(dst, uint64(port), 10)
}

// InWildcard returns the subject filter that covers every request subject:
// PREFIX.in.>. It is the subject of the capture stream.
func InWildcard(prefix string) string {
	return prefix + ".in.>"
}

// ReplySubject returns the subject under which node's egress receives
// replies: PREFIX.reply.NODE, with NODE escaped by EscapeToken. The reply
// to one request goes to ReplySubject + "." + its correlation id; egress
// subscribes to ReplySubject + ".*".
func ReplySubject(prefix, node string) string {
	return prefix + ".reply." + EscapeToken(node)
}

// ReplyID returns the correlation id named by a reply subject: its last
// token. It reports false for a subject of fewer than two tokens.
func ReplyID(subject string) (string, bool) {
	i := strings.LastIndexByte(subject, '.')
	if i < 0 || i == len(subject)-1 {
		return "", false
	}
	return subject[i+1:], true
}

// Source returns the ce-source of requests received by node on listener
// (PORT/PROTOCOL): udpgate://NODE/PORT/PROTOCOL, a URI-reference as the
// CloudEvents binding requires it. NODE is percent-encoded as RFC 3986's
// reg-name allows (every byte but an unreserved character or a
// sub-delimiter is %XX), so a node name with a space, a slash or a
// non-ASCII letter stays one host part; ParseSource decodes it.
func Source(node, listener string) string {
	return "udpgate://" + escapeHost(node) + "/" + listener
}

// ValidNode reports whether name can be a node's name: 1 to 253 bytes of
// valid UTF-8 without ASCII spaces, controls or the characters that end a
// URI's host (/ ? # @ : [ ] % \ and the like), so that ce-source is a URI
// every parser takes (Go's net/url refuses a percent-encoded ASCII byte in
// a host; a non-ASCII letter, percent-encoded, it takes).
func ValidNode(name string) bool {
	if name == "" || len(name) > 253 || !utf8.ValidString(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x80 && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~!$&'()*+,;=", c) >= 0) {
			return false
		}
	}
	return true
}

// escapeHost percent-encodes s as an RFC 3986 reg-name.
func escapeHost(s string) string {
	const hex = "0123456789ABCDEF"
	plain := func(c byte) bool {
		return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~!$&'()*+,;=", c) >= 0
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !plain(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		if c := s[i]; plain(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&0x0f])
		}
	}
	return string(b)
}

// ParseSource splits a ce-source, udpgate://NODE/PORT/PROTOCOL, into its
// parts. It reports false for anything else.
func ParseSource(source string) (node string, port uint16, protocol string, ok bool) {
	rest, found := strings.CutPrefix(source, "udpgate://")
	if !found {
		return "", 0, "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", 0, "", false
	}
	protocol = rest[i+1:]
	rest = rest[:i]
	j := strings.LastIndexByte(rest, '/')
	if j < 0 || protocol == "" {
		return "", 0, "", false
	}
	n, err := strconv.ParseUint(rest[j+1:], 10, 16)
	if err != nil {
		return "", 0, "", false
	}
	node, err = url.PathUnescape(rest[:j])
	if err != nil {
		return "", 0, "", false
	}
	return node, uint16(n), protocol, true
}

// Listener returns a listener's name, PORT/PROTOCOL, as ce-source and the
// metrics spell it. ParseListener reverses it.
func Listener(port uint16, protocol string) string {
	return strconv.FormatUint(uint64(port), 10) + "/" + protocol
}

// ParseListener splits a listener's name, PORT/PROTOCOL. It reports false
// for anything else.
func ParseListener(name string) (port uint16, protocol string, ok bool) {
	p, protocol, found := strings.Cut(name, "/")
	n, err := strconv.ParseUint(p, 10, 16)
	if !found || err != nil || protocol == "" || strings.Contains(protocol, "/") {
		return 0, "", false
	}
	return uint16(n), protocol, true
}

// EscapeToken turns any string into a single NATS subject token, reversibly.
// Bytes A-Z, a-z, 0-9, '-' and '_' stand for themselves; every other byte
// (including '.', '*', '>', '~', whitespace and each byte of a non-ASCII
// character) becomes '~' followed by two upper-case hex digits. The empty
// string becomes "~". UnescapeToken reverses it.
func EscapeToken(s string) string {
	if s == "" {
		return "~"
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if !plainByte(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plainByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('~')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0x0f])
	}
	return b.String()
}

// AppendEscapedToken appends EscapeToken(s) to dst.
func AppendEscapedToken(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, '~')
	}
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plainByte(c) {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '~', hex[c>>4], hex[c&0x0f])
	}
	return dst
}

// EscapedLen returns len(EscapeToken(s)) without building it.
func EscapedLen(s string) int {
	if s == "" {
		return 1
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if plainByte(s[i]) {
			n++
		} else {
			n += 3
		}
	}
	return n
}

// MaxPathSubject bounds the escaped path tokens of a CoAP request subject,
// dots included. NATS refuses a publish whose control line (which holds the
// subject) exceeds its max_control_line, 4096 bytes by default, and closes
// the connection: a client's path must never make a subject that long.
const MaxPathSubject = 1024

// UnescapeToken reverses EscapeToken. It reports false for a token that
// EscapeToken cannot have produced.
func UnescapeToken(tok string) (string, bool) {
	if tok == "~" {
		return "", true
	}
	if tok == "" {
		return "", false
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if plainByte(c) {
			out = append(out, c)
			continue
		}
		if c != '~' || i+2 >= len(tok) {
			return "", false
		}
		hi, ok1 := unhex(tok[i+1])
		lo, ok2 := unhex(tok[i+2])
		if !ok1 || !ok2 {
			return "", false
		}
		b := hi<<4 | lo
		if plainByte(b) {
			return "", false // not canonical: EscapeToken never escapes it
		}
		out = append(out, b)
		i += 2
	}
	return string(out), true
}

func plainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Match reports whether the NATS subject filter (tokens, `*` for one
// token, `>` for one or more at the end) matches subject, a subject
// without wildcards.
func Match(filter, subject string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subject, ".")
		switch {
		case ft == ">":
			return st != "" || smore
		case ft != "*" && ft != st:
			return false
		case !fmore || !smore:
			return fmore == smore
		}
		filter, subject = frest, srest
	}
}
