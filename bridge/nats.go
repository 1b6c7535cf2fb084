package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// The operations of the NATS service, the last token of its subjects.
const (
	OpBind      = "bind"
	OpSend      = "send"
	OpHeartbeat = "heartbeat"
	OpDelete    = "delete"
	OpStatus    = "status"
)

// maxNATSInFlight bounds the NATS requests handled at once (a delete
// waits for the port to be free); more are answered not_serving.
const maxNATSInFlight = 64

// Subject returns the NATS subject of operation op on node:
// PREFIX.bind.NODE.OP, the node escaped as one token.
func Subject(prefix, node, op string) string {
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	return prefix + ".bind." + schemas.EscapeToken(node) + "." + op
}

// service is the NATS side of a Bridge: one subscription to
// PREFIX.bind.NODE.*, each request handled on a goroutine of its own.
type service struct {
	b   *Bridge
	sub *nats.Subscription
	sem chan struct{}  // a token per request in flight
	wg  sync.WaitGroup // the requests in flight
}

func (b *Bridge) startService() (*service, error) {
	s := &service{b: b, sem: make(chan struct{}, maxNATSInFlight)}
	subject := Subject(b.Prefix, b.Node, "*")
	sub, err := b.NATS.Subscribe(subject, s.receive)
	if err != nil {
		return nil, fmt.Errorf("bridge: subscribe %s: %w", subject, err)
	}
	s.sub = sub
	return s, nil
}

// stop unsubscribes and waits for the requests in flight; nil does
// nothing.
func (s *service) stop() {
	if s == nil {
		return
	}
	s.sub.Unsubscribe()
	s.wg.Wait()
}

func (s *service) receive(m *nats.Msg) {
	if m.Reply == "" {
		return // nobody to answer
	}
	select {
	case s.sem <- struct{}{}:
	default:
		s.answer(m, nil, errorf(reasonNotServing, "node %s handles %d requests already; try again", s.b.Node, maxNATSInFlight))
		return
	}
	s.wg.Add(1)
	go func() {
		defer func() { <-s.sem; s.wg.Done() }()
		v, e := s.handle(m)
		s.answer(m, v, e)
	}()
}

// handle runs one request; the operation is the subject's last token.
func (s *service) handle(m *nats.Msg) (any, *Error) {
	b := s.b
	op := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	switch op {
	case OpBind:
		req, e := DecodeBind(m.Data)
		if e != nil {
			return nil, e
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return b.Bind(ctx, KindNATS, req)
	case OpSend:
		req, dest, payload, e := DecodeSend(m.Data)
		if e != nil {
			return nil, e
		}
		n, e := b.Send(req.ID, dest, payload)
		if e != nil {
			return nil, e
		}
		return map[string]int{"bytes_sent": n}, nil
	case OpHeartbeat, OpDelete:
		var req idRequest
		if e := decodeJSON(m.Data, &req); e != nil {
			return nil, e
		}
		if op == OpHeartbeat {
			info, e := b.Heartbeat(req.ID)
			if e != nil {
				return nil, e
			}
			return heartbeatReply{Status: "ok", LastHeartbeat: info.LastHeartbeat, ExpiresAt: info.ExpiresAt}, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if e := b.Delete(ctx, req.ID); e != nil {
			return nil, e
		}
		return map[string]string{"status": "unbound"}, nil
	case OpStatus:
		return b.Status(), nil
	}
	return nil, errorf(reasonNotFound, "no operation %q: want bind, send, heartbeat, delete or status", op)
}

// answer replies to m with v, or e as an error body (counted).
func (s *service) answer(m *nats.Msg, v any, e *Error) {
	var body []byte
	if e != nil {
		s.b.count(KindNATS, e)
		body = e.body()
	} else {
		var err error
		if body, err = json.Marshal(v); err != nil {
			body = errorf(reasonBadRequest, "%v", err).body()
		}
	}
	if err := m.Respond(body); err != nil {
		s.b.Log.Debug("bridge: answering a NATS request", "subject", m.Subject, "err", err)
	}
}
