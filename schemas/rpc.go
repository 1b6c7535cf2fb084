package schemas

// CloudEvents type of RPC call messages.
const TypeRPC = "io.udpgate.rpc"

// RPC headers. The gateway sets the first three on calls from rpc
// listeners; a worker's reply may set the last two. The envelope itself is
// schemas/proto/udpgate/rpc/v1/envelope.proto (Go: schemas/rpcpb).
const (
	HeaderRPCService = "udpgate-rpc-service" // the Call's service
	HeaderRPCMethod  = "udpgate-rpc-method"  // the Call's method
	HeaderRPCID      = "udpgate-rpc-id"      // the Call's id, decimal
	HeaderRPCStatus  = "udpgate-rpc-status"  // reply: a Status number, decimal (default 0, OK)
	HeaderRPCError   = "udpgate-rpc-error"   // reply: the error message for people
)

// RPCSubject returns the subject of a call on port:
// PREFIX.in.PORT.SERVICE.METHOD, service and method escaped with
// EscapeToken.
func RPCSubject(prefix string, port uint16, service, method string) string {
	return InSubject(prefix, port) + "." + EscapeToken(service) + "." + EscapeToken(method)
}

// AppendRPCSubject appends RPCSubject(prefix, port, service, method) to dst.
func AppendRPCSubject(dst []byte, prefix string, port uint16, service, method string) []byte {
	dst = AppendInSubject(dst, prefix, port)
	dst = append(dst, '.')
	dst = AppendEscapedToken(dst, service)
	dst = append(dst, '.')
	return AppendEscapedToken(dst, method)
}
