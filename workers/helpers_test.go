package workers_test

import (
	"context"
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

const (
	prefix  = schemas.DefaultPrefix
	port    = 9000
	node    = "node1"
	waitFor = 10 * time.Second // how long a test waits for something that must happen
)

var subject = schemas.InSubject(prefix, port)

// deliveries are the two ways a group receives requests, for the tests
// that run in both.
var deliveries = []workers.Delivery{workers.Direct, workers.Durable}

// env is one embedded NATS server with JetStream and the capture stream,
// and a fake gateway node, node1, that publishes requests and collects
// replies.
type env struct {
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	reply   string         // node1's reply subject; the reply to request ID goes to reply.ID
	replies chan *nats.Msg // replies received on reply.*
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.JetStream(t, srv)
	createStream(t, js, jetstream.FileStorage)
	e := &env{
		srv:     srv,
		nc:      nc,
		js:      js,
		reply:   schemas.ReplySubject(prefix, node),
		replies: make(chan *nats.Msg, 1024),
	}
	sub, err := nc.ChanSubscribe(e.reply+".*", e.replies)
	if err != nil {
		t.Fatalf("subscribe %s.*: %v", e.reply, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return e
}

// createStream creates the capture stream as the gateway does: capture
// copies are published to PREFIX.capture.… and stored under their request
// subjects, PREFIX.in.….
func createStream(t testing.TB, js jetstream.JetStream, storage jetstream.StorageType) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      schemas.StreamIn,
		Subjects:  []string{schemas.CaptureWildcard(prefix)},
		Storage:   storage,
		Retention: jetstream.LimitsPolicy,
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source: schemas.CaptureWildcard(prefix), Destination: schemas.InWildcard(prefix),
		},
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
}

// conn opens another connection to the server, closed when the test ends.
func (e *env) conn(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return natstest.Connect(t, e.srv, opts...)
}

// newJS returns a JetStream context on another connection.
func (e *env) newJS(t testing.TB) jetstream.JetStream {
	t.Helper()
	_, js := natstest.JetStream(t, e.srv)
	return js
}

// request returns a live raw request message as node1 builds it: the v2
// headers, and its reply subject, node1's reply subject followed by id,
// both as the message's reply subject (direct groups) and in
// udpgate-reply (durable groups). A zero deadline leaves the header out.
func (e *env) request(subject, id string, body []byte, deadline time.Time) *nats.Msg {
	reply := e.reply + "." + id
	h := nats.Header{}
	h.Set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	h.Set(schemas.HeaderID, id)
	h.Set(schemas.HeaderSource, schemas.Source(node, schemas.Listener(port, schemas.ProtocolRaw)))
	h.Set(schemas.HeaderType, schemas.TypeRaw)
	h.Set(schemas.HeaderRemote, "192.0.2.7:40000")
	h.Set(schemas.HeaderLocal, "127.0.0.1:9000")
	if !deadline.IsZero() {
		h.Set(schemas.HeaderDeadline, strconv.FormatInt(deadline.UnixMilli(), 10))
	}
	h.Set(schemas.HeaderReply, reply)
	return &nats.Msg{Subject: subject, Reply: reply, Header: h, Data: body}
}

// publish does with msg what the gateway does with a request: it
// publishes it to direct groups (core NATS, with its reply subject), then
// its capture copy, which the stream stores under the request's subject
// for durable groups. It returns once the stream has stored the copy.
func (e *env) publish(t testing.TB, msg *nats.Msg) {
	t.Helper()
	if err := e.nc.PublishMsg(msg); err != nil {
		t.Fatalf("publish %s: %v", msg.Subject, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	capture := &nats.Msg{Subject: schemas.CaptureSubject(prefix, msg.Subject), Header: msg.Header, Data: msg.Data}
	if _, err := e.js.PublishMsg(ctx, capture); err != nil {
		t.Fatalf("publish %s: %v", capture.Subject, err)
	}
}

// send publishes a request with no deadline.
func (e *env) send(t testing.TB, id, body string) {
	t.Helper()
	e.publish(t, e.request(subject, id, []byte(body), time.Time{}))
}

// next returns the next reply. It skips what NATS sends to the reply
// subject of a request that no direct group received (status 503, no
// responders), as the gateway does: a durable group may answer it.
func (e *env) next(t testing.TB) *nats.Msg {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case m := <-e.replies:
			if !noResponders(m) {
				return m
			}
		case <-timeout:
			t.Fatalf("no reply after %v", waitFor)
			return nil
		}
	}
}

// noResponders reports whether m is the status NATS sends to the reply
// subject of a request that no subscription received.
func noResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// replyID returns the correlation id that a reply's subject names.
func replyID(m *nats.Msg) string {
	id, _ := schemas.ReplyID(m.Subject)
	return id
}

// until returns the replies received before the one to id, which it
// consumes too.
func (e *env) until(t testing.TB, id string) []*nats.Msg {
	t.Helper()
	var before []*nats.Msg
	for {
		m := e.next(t)
		if replyID(m) == id {
			return before
		}
		before = append(before, m)
	}
}

// serve runs s.Serve until the test ends, and returns a function that
// stops it and returns Serve's result.
func serve(t testing.TB, s *workers.Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(waitFor):
				t.Fatalf("Serve did not return %v after cancel", waitFor)
			}
		}
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return stop
}

// start runs s.Serve as serve does, and waits until it is ready: requests
// published from then on reach it.
func start(t testing.TB, s *workers.Server) (stop func() error) {
	t.Helper()
	stop = serve(t, s)
	waitReady(t, s)
	return stop
}

// waitReady waits until s is ready.
func waitReady(t testing.TB, s *workers.Server) {
	t.Helper()
	select {
	case <-s.Ready():
	case <-time.After(waitFor):
		t.Fatalf("group %s not ready after %v", s.Group, waitFor)
	}
}

// consumerInfo returns the current info of the group's consumer.
func (e *env) consumerInfo(t testing.TB, group string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := e.js.Consumer(ctx, schemas.StreamIn, group)
	if err != nil {
		t.Fatalf("consumer %s: %v", group, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer %s info: %v", group, err)
	}
	return info
}

// waitPulling waits until n instances pull from the group's consumer, so
// that a request published now reaches them.
func (e *env) waitPulling(t testing.TB, group string, n int) {
	t.Helper()
	poll(t, "consumer "+group+" pulled by "+strconv.Itoa(n), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		c, err := e.js.Consumer(ctx, schemas.StreamIn, group)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumWaiting >= n
	})
}

// waitSettled waits until every message delivered to the group's consumer
// has been acked or termed.
func (e *env) waitSettled(t testing.TB, group string) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	poll(t, "consumer "+group+" settled", func() bool {
		info = e.consumerInfo(t, group)
		return info.NumAckPending == 0
	})
	return info
}

// poll calls cond until it reports true, failing the test after waitFor.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitFor)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out after %v waiting for %s", waitFor, what)
		}
	}
}

// reply writes body in answer to every request.
func reply(body string) workers.HandlerFunc {
	return func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
		_, err := w.Write([]byte(body))
		return err
	}
}

// waitStats waits until s.Stats() equals want: the counters are updated
// just after the reply (and, durable, the acknowledgement) is sent.
func waitStats(t testing.TB, s *workers.Server, want workers.Stats) {
	t.Helper()
	var got workers.Stats
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	timeout := time.After(waitFor)
	for {
		if got = s.Stats(); got == want {
			return
		}
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("Stats = %+v, want %+v", got, want)
		}
	}
}

// coapPort is the port of the CoAP listener the fake gateway has.
const coapPort = 5683

// coapMethods are the codes of the CoAP methods.
var coapMethods = map[string]byte{"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4, "FETCH": 5, "PATCH": 6, "iPATCH": 7}

// coapMsg returns a CoAP request message as the gateway builds it for a
// CON request on coapPort with message id 513 and token 0a0b: the subject
// of method and segments, the usual headers and the CoAP ones, and body as
// the payload. query holds the Uri-Query options, unescaped.
func (e *env) coapMsg(id, method string, segments, query []string, body []byte) *nats.Msg {
	msg := e.request(schemas.CoAPSubject(prefix, coapPort, method, segments), id, body, time.Time{})
	h := msg.Header
	h.Set(schemas.HeaderSource, schemas.Source(node, schemas.Listener(coapPort, schemas.ProtocolCoAP)))
	h.Set(schemas.HeaderType, schemas.TypeCoAP)
	h.Set(schemas.HeaderLocal, "127.0.0.1:"+strconv.Itoa(coapPort))
	escaped := make([]string, len(segments))
	for i, s := range segments {
		escaped[i] = url.PathEscape(s)
	}
	line := method + " /" + strings.Join(escaped, "/")
	if len(query) > 0 {
		escaped = escaped[:0]
		for _, q := range query {
			escaped = append(escaped, strings.ReplaceAll(url.QueryEscape(q), "+", "%20"))
		}
		line += "?" + strings.Join(escaped, "&")
	}
	h.Set(schemas.HeaderCoAPRequest, line)
	// The CoAP header (CON, the method, message id 513) and the token; the
	// options are left out: the SDK reads only the header and the token.
	head := []byte{0x40 | 2, coapMethods[method], 0x02, 0x01, 0x0a, 0x0b}
	h.Set(schemas.HeaderDatagramHead, base64.StdEncoding.EncodeToString(head))
	return msg
}
