package schemas

import "strconv"

// Unsolicited datagrams (schemas/README.md, "Unsolicited datagrams"): a
// worker sends a datagram to a client of a raw listener that has the
// option push=on, through the node that received from the client.
const (
	// HeaderOutError is set on the answer to a push that was refused:
	// one of the OutErr values; the body says more, for people. The
	// answer also has HeaderStatus StatusError.
	HeaderOutError = "udpgate-out-error"
)

// OutErr values: why a push was refused. The destination goes in
// HeaderRemote.
const (
	// OutErrNotPeer: the destination has not sent to the listener within
	// the push window, and is not in the push allow-list.
	OutErrNotPeer = "not_peer"
	// OutErrRate: the destination has had its pushes per second.
	OutErrRate = "rate"
	// OutErrAmplification: to a destination the listener's guard limits
	// (neither trusted nor validated), the bytes pushed in the window
	// would exceed the amplification factor times the bytes it sent.
	OutErrAmplification = "amplification"
	// OutErrTooLarge: the datagram is larger than the gateway's largest
	// datagram (UDPGATE_MAX_DATAGRAM).
	OutErrTooLarge = "too_large"
	// OutErrNoListener: the listener is stopping (removed, or the gateway
	// draining).
	OutErrNoListener = "no_listener"
	// OutErrBadDestination: HeaderRemote is missing, not ip:port, or not
	// a unicast address with a port.
	OutErrBadDestination = "bad_destination"
	// OutErrSend: the socket refused the datagram.
	OutErrSend = "send_error"
)

// OutErrors lists the OutErr values, in the order metrics show them.
var OutErrors = []string{OutErrNotPeer, OutErrRate, OutErrAmplification, OutErrTooLarge, OutErrNoListener, OutErrBadDestination, OutErrSend}

// OutSubject returns the subject a worker publishes a datagram to, for
// node to send from its raw listener on port: PREFIX.out.NODE.PORT, with
// NODE escaped by EscapeToken as in ReplySubject (a request's ce-source
// names its node). Only the node that received from a client can reach
// it through the client's NAT.
func OutSubject(prefix, node string, port uint16) string {
	return prefix + ".out." + EscapeToken(node) + "." + strconv.FormatUint(uint64(port), 10)
}

// OutWildcard returns the subject filter that covers every push subject:
// PREFIX.out.>.
func OutWildcard(prefix string) string {
	return prefix + ".out.>"
}
