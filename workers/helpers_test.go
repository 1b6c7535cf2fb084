package workers_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

const (
	prefix  = schemas.DefaultPrefix
	port    = 9000
	waitFor = 10 * time.Second // how long a test waits for something that must happen
)

var subject = schemas.InSubject(prefix, port)

// env is one embedded JetStream server with the request stream, and a fake
// gateway that publishes requests and collects replies.
type env struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	reply   string         // the gateway's reply subject
	replies chan *nats.Msg // replies received on it
	newJS   func() jetstream.JetStream
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.JetStream(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      schemas.StreamIn,
		Subjects:  []string{schemas.InWildcard(prefix)},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	e := &env{
		nc:      nc,
		js:      js,
		reply:   schemas.ReplySubject(prefix, "node1"),
		replies: make(chan *nats.Msg, 1024),
		newJS: func() jetstream.JetStream {
			_, js := natstest.JetStream(t, srv)
			return js
		},
	}
	sub, err := nc.ChanSubscribe(e.reply, e.replies)
	if err != nil {
		t.Fatalf("subscribe %s: %v", e.reply, err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return e
}

// request returns a request message as the gateway builds it. A zero
// deadline leaves the header out.
func (e *env) request(subject, id string, body []byte, deadline time.Time) *nats.Msg {
	now := time.Now().UTC()
	h := nats.Header{}
	h.Set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	h.Set(schemas.HeaderCEID, id)
	h.Set(schemas.HeaderSource, schemas.Source("node1", "9000/raw"))
	h.Set(schemas.HeaderType, schemas.TypeRaw)
	h.Set(schemas.HeaderTime, now.Format(time.RFC3339Nano))
	h.Set(schemas.HeaderID, id)
	h.Set(schemas.HeaderRemote, "192.0.2.7:40000")
	h.Set(schemas.HeaderLocal, "127.0.0.1:9000")
	h.Set(schemas.HeaderListener, "9000/raw")
	h.Set(schemas.HeaderReply, e.reply)
	if !deadline.IsZero() {
		h.Set(schemas.HeaderDeadline, strconv.FormatInt(deadline.UnixMilli(), 10))
	}
	return &nats.Msg{Subject: subject, Header: h, Data: body}
}

// publish stores msg in the stream.
func (e *env) publish(t testing.TB, msg *nats.Msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := e.js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish %s: %v", msg.Subject, err)
	}
}

// send publishes a request with no deadline.
func (e *env) send(t testing.TB, id, body string) {
	t.Helper()
	e.publish(t, e.request(subject, id, []byte(body), time.Time{}))
}

// next returns the next reply.
func (e *env) next(t testing.TB) *nats.Msg {
	t.Helper()
	select {
	case m := <-e.replies:
		return m
	case <-time.After(waitFor):
		t.Fatalf("no reply after %v", waitFor)
		return nil
	}
}

// until returns the replies received before the one with id, which it
// consumes too.
func (e *env) until(t testing.TB, id string) []*nats.Msg {
	t.Helper()
	var before []*nats.Msg
	for {
		m := e.next(t)
		if m.Header.Get(schemas.HeaderID) == id {
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
// just after the reply and the acknowledgement are sent.
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

// coapMsg returns a CoAP request message as the gateway builds it for a
// request on coapPort: the subject of method and segments, the usual
// headers and the CoAP ones, and body as the payload. query holds the
// Uri-Query options, unescaped.
func (e *env) coapMsg(id, method string, segments, query []string, body []byte) *nats.Msg {
	msg := e.request(schemas.CoAPSubject(prefix, coapPort, method, segments), id, body, time.Time{})
	listener := strconv.Itoa(coapPort) + "/" + schemas.ProtocolCoAP
	h := msg.Header
	h.Set(schemas.HeaderSource, schemas.Source("node1", listener))
	h.Set(schemas.HeaderType, schemas.TypeCoAP)
	h.Set(schemas.HeaderListener, listener)
	h.Set(schemas.HeaderLocal, "127.0.0.1:"+strconv.Itoa(coapPort))
	h.Set(schemas.HeaderCoAPMethod, method)
	escaped := make([]string, len(segments))
	for i, s := range segments {
		escaped[i] = url.PathEscape(s)
	}
	h.Set(schemas.HeaderCoAPPath, "/"+strings.Join(escaped, "/"))
	if len(query) > 0 {
		escaped = escaped[:0]
		for _, q := range query {
			escaped = append(escaped, strings.ReplaceAll(url.QueryEscape(q), "+", "%20"))
		}
		h.Set(schemas.HeaderCoAPQuery, strings.Join(escaped, "&"))
	}
	h.Set(schemas.HeaderCoAPToken, "0a0b")
	h.Set(schemas.HeaderCoAPType, "CON")
	h.Set(schemas.HeaderCoAPMessageID, "513")
	return msg
}
