package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// maxEventCaptures bounds the capture copies of connection events
// awaiting JetStream's acknowledgement; beyond it a copy is not
// published, and counted.
const maxEventCaptures = 1024

// newEventStream returns the JetStream publisher of a ws listener's
// connection events' capture copies: apart from the calls', so that
// their acknowledgements are counted apart and never taken for an
// exchange's.
func (s *Server) newEventStream() (jetstream.JetStream, error) {
	return jetstream.New(s.NATS,
		jetstream.WithPublishAsyncMaxPending(maxEventCaptures),
		jetstream.WithPublishAsyncTimeout(captureAckWait(s.Deadline)),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) {
			s.stats.eventsCaptured.Add(1)
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			s.stats.eventCaptureFailed.Add(1)
			s.Log.Debug("ingress: event capture not acknowledged", "listener", s.listener, "err", err)
		}),
	)
}

// Event publishes a connection event of a ws listener, route
// schemas.WSConnect or schemas.WSDisconnect, on its subject
// (schemas.WSEventSubject), with ev as its JSON body, and its capture
// copy. With wait > 0 it is a request, and Event returns the first reply
// that comes within wait, or nil if none does (or none subscribes).
// The error is NATS's, when the event could not be published.
func (s *Server) Event(ctx context.Context, route string, ev *schemas.WSEvent, wait time.Duration) (*nats.Msg, error) {
	subject := schemas.WSEventSubject(s.Prefix, s.port, route)
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	h := nats.Header{}
	h.Set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	h.Set(schemas.HeaderID, ev.Connection+"."+route[1:])
	h.Set(schemas.HeaderSource, s.source)
	h.Set(schemas.HeaderTime, now.UTC().Format(time.RFC3339Nano))
	h.Set(schemas.HeaderRemote, ev.Remote)
	h.Set(schemas.HeaderLocal, ev.Local)
	h.Set(schemas.HeaderWSConnection, ev.Connection)
	if route == schemas.WSConnect {
		h.Set(schemas.HeaderType, schemas.TypeWSConnect)
		if wait > 0 {
			h.Set(schemas.HeaderDeadline, strconv.FormatInt(now.Add(wait).UnixMilli(), 10))
		}
	} else {
		h.Set(schemas.HeaderType, schemas.TypeWSDisconnect)
		h.Set(schemas.HeaderWSCloseCode, strconv.Itoa(ev.Code))
		h.Set(schemas.HeaderWSCloseReason, ev.Reason)
		h.Set(schemas.HeaderWSClosedBy, ev.ClosedBy)
	}
	s.stats.events.Add(1)
	s.captureEvent(&nats.Msg{Subject: schemas.CaptureSubject(s.Prefix, subject), Header: h, Data: body})
	msg := &nats.Msg{Subject: subject, Header: h, Data: body}
	if wait <= 0 {
		return nil, s.NATS.PublishMsg(msg)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	reply, err := s.NATS.RequestMsgWithContext(ctx, msg)
	switch {
	case err == nil:
		return reply, nil
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, nil
	}
	return nil, err
}

// captureEvent publishes msg, the capture copy of an event, without
// waiting.
func (s *Server) captureEvent(msg *nats.Msg) {
	js := s.eventStream.Load()
	if js == nil {
		s.stats.eventCaptureFailed.Add(1)
		return
	}
	if _, err := (*js).PublishMsgAsync(msg, jetstream.WithStallWait(time.Nanosecond)); err != nil {
		s.stats.eventCaptureFailed.Add(1)
		s.Log.Debug("ingress: event capture", "listener", s.listener, "err", err)
	}
}
