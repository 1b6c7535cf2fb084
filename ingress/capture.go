package ingress

import (
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// capture is a request message whose core publish is done, on its way to
// the capture stream.
type capture struct {
	msg     *nats.Msg
	subject string
}

// captureLoop publishes the capture copy of each request in captures. It
// does not wait for a free in-flight slot: the request is already with
// the direct groups, and waiting would stall every capture behind a
// JetStream that does not acknowledge.
func (s *Server) captureLoop(js jetstream.JetStream, captures <-chan capture) {
	stall := []jetstream.PublishOpt{jetstream.WithStallWait(time.Nanosecond)}
	for {
		select {
		case c, ok := <-captures:
			if !ok {
				return
			}
			s.capturePublish(js, c.msg, c.subject, stall)
		case msg := <-s.retries:
			s.retryCapture(js, msg, stall)
		}
	}
}

// captureAckWait is how long a capture copy waits for JetStream's
// acknowledgement before it is published again: a third of the deadline,
// so that a stream electing a leader (a few seconds) costs retries rather
// than the copy, but at least a second, so that a slow acknowledgement is
// rarely taken for a lost one (a copy stored and published again is
// stored twice: durable groups see it twice, and egress drops the second
// reply).
func captureAckWait(deadline time.Duration) time.Duration {
	return max(deadline/3, time.Second)
}

// retryCapture publishes msg, a capture copy that JetStream did not
// acknowledge, again if its request's deadline has not passed (its
// acknowledgement may come after it: a late copy is still a copy);
// otherwise the capture has a gap, counted.
func (s *Server) retryCapture(js jetstream.JetStream, msg *nats.Msg, stall []jetstream.PublishOpt) {
	ms, err := strconv.ParseInt(msg.Header.Get(schemas.HeaderDeadline), 10, 64)
	if err != nil || !time.Now().Before(time.UnixMilli(ms)) {
		s.stats.captureFailed.Add(1)
		s.recycle(msg)
		return
	}
	s.stats.captureRetried.Add(1)
	s.capturePublish(js, msg, msg.Subject, stall)
}

// capturePublish publishes msg, built by newMessage, as the capture copy
// of its request, to capture.
func (s *Server) capturePublish(js jetstream.JetStream, msg *nats.Msg, capture string, stall []jetstream.PublishOpt) {
	msg.Subject, msg.Reply = capture, "" // JetStream's acknowledgement comes on a reply subject of its own
	if _, err := js.PublishMsgAsync(msg, stall...); err != nil {
		s.recycle(msg)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			s.stats.inFlight.Add(1)
		} else {
			s.stats.captureFailed.Add(1)
			s.Log.Debug("ingress: capture", "listener", s.listener, "err", err)
		}
	}
}

// stallWait is how long the publisher of an ingest-only listener waits for
// a free in-flight slot before dropping a datagram; meanwhile the queue
// absorbs what the socket reads.
const stallWait = 50 * time.Millisecond

// captureFailed runs when JetStream refuses a capture copy or does not
// acknowledge it before the deadline: a gap in the capture, counted. The
// exchange stays open, since direct groups received the request.
func (s *Server) captureFailed(_ jetstream.JetStream, msg *nats.Msg, err error) {
	s.Log.Debug("ingress: capture not acknowledged", "listener", s.listener, "err", err)
	s.fallBack(msg)
	// Not at once: a stream without a leader refuses at once, and would
	// be asked again and again.
	time.AfterFunc(captureRetryWait, func() {
		select {
		case s.retries <- msg: // the capture goroutine publishes it again, or counts the gap
		default:
			s.stats.captureFailed.Add(1)
			s.recycle(msg)
		}
	})
}

// captureRetryWait is how long a capture copy that JetStream did not take
// waits before it is published again.
const captureRetryWait = 100 * time.Millisecond

// fallBack publishes the request of msg, a capture copy that JetStream did
// not take, to its fallback subject, the first time its capture fails and
// if its exchange is still open: durable groups subscribe there too, and
// answer over core NATS while the stream cannot deliver it (a stream
// electing a leader takes longer than most deadlines). The copy carries no
// NATS reply subject: with no durable group on its subject, a reply
// subject would bring the exchange a no-responders status instead of the
// direct groups' answer; workers answer to its udpgate-reply header. A
// worker that later receives the stored copy too skips it (see
// workers.Server); another instance of its group answers it again, and
// egress drops that second reply as it drops every late one.
func (s *Server) fallBack(msg *nats.Msg) {
	if s.NoReply || msg.Subject == "" {
		return // an ingest-only listener has no exchange, nor anyone to answer
	}
	if seq, ok := s.Table.ParseID(msg.Header.Get(schemas.HeaderID)); !ok {
		return
	} else if _, ok := s.Table.Pending(seq); !ok {
		return // answered already
	}
	s.fallenMu.Lock()
	_, done := s.fallen[msg]
	if !done {
		if s.fallen == nil {
			s.fallen = make(map[*nats.Msg]struct{})
		}
		s.fallen[msg] = struct{}{}
		s.nfallen.Store(int32(len(s.fallen)))
	}
	s.fallenMu.Unlock()
	if done {
		return
	}
	fallback := &nats.Msg{Subject: fallbackSubject(s.Prefix, msg.Subject), Header: msg.Header, Data: msg.Data}
	if err := s.NATS.PublishMsg(fallback); err != nil {
		s.Log.Debug("ingress: fallback", "listener", s.listener, "err", err)
		return
	}
	s.stats.fallback.Add(1)
}

// forget drops msg, whose publishes are over, from the fallen set.
func (s *Server) forget(msg *nats.Msg) {
	s.fallenMu.Lock()
	delete(s.fallen, msg)
	s.nfallen.Store(int32(len(s.fallen)))
	s.fallenMu.Unlock()
}

// fallbackSubject returns the fallback subject of a request whose capture
// subject is capture (PREFIX.capture.…).
func fallbackSubject(prefix, capture string) string {
	return prefix + ".fallback" + capture[len(prefix)+len(".capture"):]
}
