package workers

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// ErrNoConnection is the error of a push or close to a WebSocket
// connection that is not open: it closed, or no gateway node holds its
// id (the node's process is gone).
var ErrNoConnection = errors.New("workers: no open WebSocket connection with that id")

// PushError is a push or close the gateway refused for another reason
// than an unknown connection: Code is one of the schemas.WSErr values.
type PushError struct {
	Code, Message string
}

func (e *PushError) Error() string { return "workers: push refused: " + e.Code + ": " + e.Message }

// Push sends body to the WebSocket connection conn of a ws listener (an
// RPCRequest's Connection) as a binary message, at any time, through
// the gateway node that holds it (PREFIX.ws.CONNECTION.push, prefix
// schemas.DefaultPrefix if empty), and waits for the node's answer
// until ctx ends. Clients that speak the envelope expect a Reply with id
// 0 whose body is the pushed data: marshal one (schemas/rpcpb) as body.
// The error is ErrNoConnection, a *PushError, or NATS's.
func Push(ctx context.Context, nc *nats.Conn, prefix, conn string, body []byte) error {
	return connOp(ctx, nc, prefix, conn, schemas.WSPush, body, nil)
}

// PushText is Push as a text message; text must be UTF-8.
func PushText(ctx context.Context, nc *nats.Conn, prefix, conn, text string) error {
	return connOp(ctx, nc, prefix, conn, schemas.WSPush, []byte(text), nats.Header{schemas.HeaderWSMessage: {"text"}})
}

// CloseConnection closes the WebSocket connection conn with code (1000,
// or 3000 to 4999 for the application's own) and reason (at most 123
// bytes), as Push reaches it.
func CloseConnection(ctx context.Context, nc *nats.Conn, prefix, conn string, code int, reason string) error {
	return connOp(ctx, nc, prefix, conn, schemas.WSClose, []byte(reason), nats.Header{schemas.HeaderWSCloseCode: {strconv.Itoa(code)}})
}

func connOp(ctx context.Context, nc *nats.Conn, prefix, conn, op string, body []byte, h nats.Header) error {
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	m := &nats.Msg{Subject: schemas.WSPushSubject(prefix, conn, op), Data: body, Header: h}
	a, err := nc.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return ErrNoConnection
	}
	if err != nil {
		return err
	}
	switch code := a.Header.Get(schemas.HeaderWSError); code {
	case "":
		return nil
	case schemas.WSErrUnknown:
		return ErrNoConnection
	default:
		return &PushError{Code: code, Message: string(a.Data)}
	}
}
