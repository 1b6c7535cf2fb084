package ws

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// closeFrame is the code and reason a connection was closed with.
type closeFrame struct {
	code   websocket.StatusCode
	reason string
}

// close closes the connection with code and reason, without waiting for
// the client's close frame (its handler waits), unless it is closing
// already.
func (cn *conn) close(code websocket.StatusCode, reason string) {
	if cn.closing.CompareAndSwap(nil, &closeFrame{code, reason}) {
		go cn.c.Close(code, reason)
	}
}

// closeWait closes the connection with code and reason, waiting for the
// client's close frame (at most 5 s), unless it is closing already; it
// returns Close's error, for the read loop to return.
func (cn *conn) closeWait(code websocket.StatusCode, reason string) error {
	if !cn.closing.CompareAndSwap(nil, &closeFrame{code, reason}) {
		return errors.New("ws: closing")
	}
	return cn.c.Close(code, reason)
}

// event returns the fields every event of the connection has.
func (cn *conn) event() *schemas.WSEvent {
	return &schemas.WSEvent{Connection: cn.id, Remote: cn.remote.String(), Local: cn.local.String()}
}

// connect publishes the connection's $connect event and waits as long as
// ConnectWait for a reply that refuses it. It reports whether the
// connection is to be served; a refused one is closed, with the reply's
// code and reason.
func (cn *conn) connect(r *http.Request) bool {
	s := cn.s
	ev := cn.event()
	ev.Path, ev.Query = r.URL.Path, r.URL.RawQuery
	ev.Headers = make(map[string][]string, len(r.Header))
	for k, v := range r.Header {
		if k != "Sec-Websocket-Key" {
			ev.Headers[k] = v
		}
	}
	reply, err := s.Publisher.Event(r.Context(), schemas.WSConnect, ev, max(s.o.connectWait, 0))
	if err != nil {
		s.o.log.Debug("ws: $connect", "connection", cn.id, "err", err)
	}
	if reply == nil || reply.Header.Get(schemas.HeaderWSCloseCode) == "" {
		return true
	}
	code, ok := schemas.ParseCloseCode(reply.Header.Get(schemas.HeaderWSCloseCode))
	if !ok || !schemas.ValidRefusalCode(code) {
		code = int(websocket.StatusPolicyViolation)
	}
	s.stats.refusedConnect.Add(1)
	cn.closeWait(websocket.StatusCode(code), closeReason(reply.Data))
	return false
}

// closeReason is b as a close frame's reason: valid UTF-8, at most 123
// bytes (RFC 6455 §5.5), cut at a character.
func closeReason(b []byte) string {
	r := strings.ToValidUTF8(string(b), "\uFFFD")
	if len(r) <= 123 {
		return r
	}
	r = r[:123]
	for !utf8.ValidString(r) {
		r = r[:len(r)-1]
	}
	return r
}

// disconnect publishes the connection's $disconnect event; err is what
// ended its read loop.
func (cn *conn) disconnect(err error) {
	ev := cn.event()
	ev.DurationMS = time.Since(cn.opened).Milliseconds()
	if f := cn.closing.Load(); f != nil {
		ev.Code, ev.Reason, ev.ClosedBy = int(f.code), f.reason, "gateway"
	} else {
		ev.Code, ev.ClosedBy = int(websocket.StatusAbnormalClosure), "client"
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			ev.Code, ev.Reason = int(ce.Code), ce.Reason
		}
	}
	if _, err := cn.s.Publisher.Event(context.Background(), schemas.WSDisconnect, ev, 0); err != nil {
		cn.s.o.log.Debug("ws: $disconnect", "connection", cn.id, "err", err)
	}
}

// onPush takes a push or a close for one of the server's connections
// (PREFIX.ws.BOOT.SEQ.OP), on the NATS subscription's goroutine: it never
// waits on a client. A request gets an answer: empty, or with
// HeaderStatus error and HeaderWSError.
func (s *Server) onPush(m *nats.Msg) {
	rest := strings.TrimPrefix(m.Subject, s.o.prefix+".ws.")
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		s.refusePush(m, schemas.WSErrBad, "the subject is PREFIX.ws.CONNECTION.push or .close")
		return
	}
	id, op := rest[:i], rest[i+1:]
	s.mu.Lock()
	cn := s.conns[id]
	s.mu.Unlock()
	if cn == nil || cn.closing.Load() != nil {
		s.refusePush(m, schemas.WSErrUnknown, "no open connection "+id+" on this node")
		return
	}
	switch op {
	case schemas.WSPush:
		text := m.Header.Get(schemas.HeaderWSMessage) == "text"
		switch {
		case len(m.Data) > MaxPushBytes:
			s.refusePush(m, schemas.WSErrTooLarge, "larger than "+strconv.Itoa(MaxPushBytes)+" bytes")
			return
		case text && !utf8.Valid(m.Data):
			s.refusePush(m, schemas.WSErrNotText, "a text message must be UTF-8")
			return
		}
		select {
		case cn.pushes <- reply{b: m.Data, text: text, push: true}:
		default:
			s.stats.slow.Add(1)
			cn.close(websocket.StatusPolicyViolation, "too slow to read its messages")
			s.refusePush(m, schemas.WSErrSlow, "connection "+id+" had "+strconv.Itoa(s.o.maxPush)+" messages unread: closed")
			return
		}
	case schemas.WSClose:
		code := int(websocket.StatusNormalClosure)
		if v := m.Header.Get(schemas.HeaderWSCloseCode); v != "" {
			var ok bool
			if code, ok = schemas.ParseCloseCode(v); !ok {
				s.refusePush(m, schemas.WSErrBad, "bad close code "+strconv.Quote(v)+": 1000 to 1003, 1007 to 1014 or 3000 to 4999")
				return
			}
		}
		s.stats.workerClose.Add(1)
		cn.close(websocket.StatusCode(code), closeReason(m.Data))
	default:
		s.refusePush(m, schemas.WSErrBad, "no operation "+strconv.Quote(op)+": push or close")
		return
	}
	if m.Reply != "" {
		m.Respond(nil)
	}
}

// refusePush counts a push or close that was not done and, if it is a
// request, answers why.
func (s *Server) refusePush(m *nats.Msg, code, why string) {
	s.stats.pushRefused.Add(1)
	if m.Reply == "" {
		return
	}
	a := nats.NewMsg(m.Reply)
	a.Header.Set(schemas.HeaderStatus, schemas.StatusError)
	a.Header.Set(schemas.HeaderWSError, code)
	a.Data = []byte(why)
	m.RespondMsg(a)
}
