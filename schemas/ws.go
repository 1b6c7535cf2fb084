package schemas

import "strconv"

// HeaderWSConnection is set on calls and events from a ws listener: the id
// of the WebSocket connection they came on, opaque, unique in the gateway
// node's lifetime: two subject tokens (letters, digits, '-' and '_')
// joined by a dot, so that WSPushSubject is the prefix, "ws", the id and
// the operation.
const HeaderWSConnection = "udpgate-ws-connection"

// CloudEvents types of a ws listener's connection events.
const (
	TypeWSConnect    = "io.udpgate.ws.connect"
	TypeWSDisconnect = "io.udpgate.ws.disconnect"
)

// The routes of a ws listener's connection events, as API Gateway names
// them: the last token of their subject, escaped ("$" is "~24").
const (
	WSConnect    = "$connect"
	WSDisconnect = "$disconnect"
)

// WSEventSubject returns the subject of a ws listener's connection event
// route (WSConnect or WSDisconnect) on port: PREFIX.in.PORT.~24connect or
// PREFIX.in.PORT.~24disconnect. An RPC call's subject has two tokens after
// the port, an event's one: a filter PREFIX.in.PORT.*.* takes calls only,
// PREFIX.in.PORT.> calls and events.
func WSEventSubject(prefix string, port uint16, route string) string {
	return InSubject(prefix, port) + "." + EscapeToken(route)
}

// Headers of connection events and of the messages a worker sends to a
// connection.
const (
	// HeaderWSCloseCode is a $disconnect event's close code (RFC 6455
	// §7.4, decimal; 1006 if the connection ended without a close frame).
	// On a $connect reply it refuses the connection, closing it with this
	// code (1008 or 4000 to 4999) and the reply's body as the reason. On
	// a close message it is the code to close with (default 1000).
	HeaderWSCloseCode = "udpgate-ws-close-code"
	// HeaderWSCloseReason is a $disconnect event's close reason.
	HeaderWSCloseReason = "udpgate-ws-close-reason"
	// HeaderWSClosedBy says who closed the connection in a $disconnect
	// event: "client" or "gateway".
	HeaderWSClosedBy = "udpgate-ws-closed-by"
	// HeaderWSMessage is the frame type of a push: "binary" (the default)
	// or "text" (the body must then be UTF-8).
	HeaderWSMessage = "udpgate-ws-message"
	// HeaderWSError is set on the answer to a push or close that failed:
	// one of the WSError values; the body says more, for people.
	HeaderWSError = "udpgate-ws-error"
)

// WSError values: why a push or close was not done.
const (
	WSErrUnknown  = "unknown-connection" // no open connection has the id (closed, or never was)
	WSErrTooLarge = "too-large"          // the push is larger than the listener's message limit
	WSErrNotText  = "not-text"           // a text push whose body is not UTF-8
	WSErrSlow     = "slow-client"        // the connection's push queue was full: it is closed
	WSErrBad      = "bad-request"        // an unknown operation, or a bad close code
)

// Operations on a connection, the last token of WSPushSubject.
const (
	WSPush  = "push"
	WSClose = "close"
)

// WSPushSubject returns the subject on which a worker sends a message to
// the connection conn (op WSPush) or closes it (op WSClose):
// PREFIX.ws.CONN.OP. Only the node holding the connection subscribes to
// it: a request to an id no node holds gets NATS's no-responders status.
func WSPushSubject(prefix, conn, op string) string {
	return prefix + ".ws." + conn + "." + op
}

// WSPushWildcard returns the subject a ws listener whose connection ids
// start with boot subscribes to: PREFIX.ws.BOOT.>.
func WSPushWildcard(prefix, boot string) string {
	return prefix + ".ws." + boot + ".>"
}

// WSEvent is the body of a connection event, JSON. The headers carry the
// same connection id, remote and local addresses.
type WSEvent struct {
	Connection string `json:"connection"`
	Remote     string `json:"remote"`
	Local      string `json:"local"`
	// $connect: the upgrade request's path, query (raw, without '?') and
	// headers (canonical names; Sec-WebSocket-Key left out).
	Path    string              `json:"path,omitempty"`
	Query   string              `json:"query,omitempty"`
	Headers map[string][]string `json:"headers,omitempty"`
	// $disconnect: the close code and reason, who closed, and how long
	// the connection lived.
	Code       int    `json:"code,omitempty"`
	Reason     string `json:"reason,omitempty"`
	ClosedBy   string `json:"closed_by,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

// ValidRefusalCode reports whether code may refuse a connection in a
// $connect reply: 1008 (policy violation) or an application code, 4000
// to 4999.
func ValidRefusalCode(code int) bool {
	return code == 1008 || code >= 4000 && code <= 4999
}

// ParseCloseCode parses a close code header: a code a WebSocket close
// frame may carry (RFC 6455 §7.4: 1000 to 1003, 1007 to 1014, 3000 to
// 4999).
func ParseCloseCode(v string) (int, bool) {
	c, err := strconv.Atoi(v)
	if err != nil {
		return 0, false
	}
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1014, c >= 3000 && c <= 4999:
		return c, true
	}
	return 0, false
}
