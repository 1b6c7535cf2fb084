package workers

import (
	"context"
	"errors"
	"net/netip"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// ErrNoPushListener is the error of SendDatagram when the node serves no
// raw listener with push=on on the port (or the node is gone): NATS found
// no subscriber to the push subject.
var ErrNoPushListener = errors.New("workers: no push=on raw listener on that node and port")

// OutError is a datagram the gateway refused to send: Reason is one of
// the schemas.OutErr values (schemas.OutErrNotPeer, OutErrRate, ...), and
// Message says more, for people.
type OutError struct {
	Reason, Message string
}

func (e *OutError) Error() string { return "workers: datagram refused: " + e.Reason + ": " + e.Message }

// SendDatagram sends b, unsolicited, to dest from the raw listener on
// port of the gateway node named node (a request's Node, Port and Remote
// say whom to reach and how), and waits for the node's answer until ctx
// ends: the datagram leaves from the address dest sent to, through the
// NAT mapping dest made towards that node. The listener must have the
// option push=on, and dest must have sent to it recently or be in the
// gateway's push allow-list, within a rate and the amplification limit
// (schemas/README.md, "Unsolicited datagrams"). prefix is the subject
// prefix (schemas.DefaultPrefix if empty). The error is
// ErrNoPushListener, an *OutError, or NATS's.
func SendDatagram(ctx context.Context, nc *nats.Conn, prefix, node string, port uint16, dest netip.AddrPort, b []byte) error {
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	m := &nats.Msg{
		Subject: schemas.OutSubject(prefix, node, port),
		Header:  nats.Header{schemas.HeaderRemote: {dest.String()}},
		Data:    b,
	}
	a, err := nc.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return ErrNoPushListener
	}
	if err != nil {
		return err
	}
	if reason := a.Header.Get(schemas.HeaderOutError); reason != "" {
		return &OutError{Reason: reason, Message: string(a.Data)}
	}
	return nil
}
