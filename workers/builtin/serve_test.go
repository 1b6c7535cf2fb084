package builtin_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// deliveries are the ways a group receives requests: every built-in
// worker serves in both.
var deliveries = []workers.Delivery{workers.Direct, workers.Durable}

// TestServe runs each built-in raw worker behind a workers.Server on a real
// NATS server with JetStream, in each delivery, and sends it a request as
// the gateway does.
func TestServe(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		handler workers.Handler
		body    string
		want    string
	}{
		{"echo", builtin.Echo, "ping", "ping"},
		{"time", builtin.Time{Now: func() time.Time { return now }}, `[7,"time?"]`, `[7,"The time is 2026-01-02T03:04:05Z"]`},
	}
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			gw := newGateway(t)
			subject := schemas.InSubject(schemas.DefaultPrefix, 9000)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					gw.serve(t, d, tt.name, []string{subject}, tt.handler)
					msg := nats.NewMsg(subject)
					msg.Header.Set(schemas.HeaderSource, schemas.Source("node1", "9000/raw"))
					msg.Header.Set(schemas.HeaderType, schemas.TypeRaw)
					msg.Data = []byte(tt.body)
					reply := gw.exchange(t, tt.name, msg)
					if got := string(reply.Data); got != tt.want {
						t.Errorf("reply %q, want %q", got, tt.want)
					}
				})
			}
		})
	}
}

// TestServeCoAP runs the built-in CoAP worker behind a workers.Server that
// takes every CoAP request of its port, in each delivery, and sends it
// requests as the gateway does.
func TestServeCoAP(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) { testServeCoAP(t, d) })
	}
}

func testServeCoAP(t *testing.T, d workers.Delivery) {
	const port = 5683
	gw := newGateway(t)
	gw.serve(t, d, "coap", []string{schemas.InSubject(schemas.DefaultPrefix, port) + ".>"}, builtin.CoAP())
	tests := []struct {
		name, method, path string
		contentFormat      string // request's; "" for none
		body               string
		code, cf, want     string // reply's code and Content-Format; "" for none
	}{
		{name: "hello", method: "GET", path: "/hello", cf: "0", want: "Hello from udpgate"},
		{name: "echo", method: "POST", path: "/echo", contentFormat: "50", body: `{"a":1}`, cf: "50", want: `{"a":1}`},
		{name: "echo-without-format", method: "POST", path: "/echo", body: "ping", want: "ping"},
		{name: "time", method: "GET", path: "/time", cf: "0"},
		{name: "unknown-path", method: "GET", path: "/nope", code: "4.04"},
		{name: "deeper-path", method: "GET", path: "/hello/there", code: "4.04"},
		{name: "root", method: "GET", path: "/", code: "4.04"},
		{name: "other-method", method: "DELETE", path: "/hello", code: "4.05"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var segs []string
			if tt.path != "/" {
				segs = strings.Split(tt.path[1:], "/")
			}
			msg := nats.NewMsg(schemas.CoAPSubject(schemas.DefaultPrefix, port, tt.method, segs))
			msg.Header.Set(schemas.HeaderSource, schemas.Source("node1", "5683/coap"))
			msg.Header.Set(schemas.HeaderType, schemas.TypeCoAP)
			msg.Header.Set(schemas.HeaderCoAPRequest, tt.method+" "+tt.path)
			// CON, message id 1, token 01; the options are left out.
			msg.Header.Set(schemas.HeaderDatagramHead, base64.StdEncoding.EncodeToString([]byte{0x41, 0x01, 0x00, 0x01, 0x01}))
			if tt.contentFormat != "" {
				msg.Header.Set(schemas.HeaderCoAPContentFormat, tt.contentFormat)
			}
			msg.Data = []byte(tt.body)
			before := time.Now().Truncate(time.Second)
			reply := gw.exchange(t, tt.name, msg)
			after := time.Now()
			if got := reply.Header.Get(schemas.HeaderCoAPCode); got != tt.code {
				t.Errorf("code %q, want %q", got, tt.code)
			}
			if got := reply.Header.Get(schemas.HeaderCoAPContentFormat); got != tt.cf {
				t.Errorf("content-format %q, want %q", got, tt.cf)
			}
			if got := reply.Header.Get(schemas.HeaderStatus); got != "" {
				t.Errorf("status %q, want none", got)
			}
			got := string(reply.Data)
			if tt.name == "time" {
				stamp, err := time.Parse(time.RFC3339, got)
				if err != nil || stamp.Before(before) || stamp.After(after) {
					t.Errorf("time %q, %v; want RFC 3339 between %v and %v", got, err, before, after)
				}
			} else if got != tt.want {
				t.Errorf("payload %q, want %q", got, tt.want)
			}
		})
	}
}

// gateway is a real NATS server with JetStream and the gateway's capture
// stream, and a fake gateway node, node1, that publishes requests and
// receives replies.
type gateway struct {
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	replies *nats.Subscription // node1's reply subjects, PREFIX.reply.node1.*
}

func newGateway(t *testing.T) *gateway {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.JetStream(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	capture := schemas.CaptureWildcard(schemas.DefaultPrefix)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:             schemas.StreamIn,
		Subjects:         []string{capture},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: capture, Destination: schemas.InWildcard(schemas.DefaultPrefix)},
		Storage:          jetstream.FileStorage,
		Retention:        jetstream.LimitsPolicy,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	replies, err := nc.SubscribeSync(schemas.ReplySubject(schemas.DefaultPrefix, "node1") + ".*")
	if err != nil {
		t.Fatal(err)
	}
	return &gateway{srv: srv, nc: nc, js: js, replies: replies}
}

// serve runs h as group name on subjects until the test ends, and waits
// until it is ready.
func (g *gateway) serve(t *testing.T, d workers.Delivery, name string, subjects []string, h workers.Handler) {
	t.Helper()
	s := &workers.Server{NATS: natstest.Connect(t, g.srv), Delivery: d, Group: name, Subjects: subjects, Handler: h}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Serve = %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("worker not ready")
	}
}

// exchange does with msg, request id, what the gateway does: it publishes
// it to direct groups as a core NATS request whose reply subject names
// the exchange, and its capture copy for durable groups, with the reply
// subject in udpgate-reply. It returns the reply.
func (g *gateway) exchange(t *testing.T, id string, msg *nats.Msg) *nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply := schemas.ReplySubject(schemas.DefaultPrefix, "node1") + "." + id
	msg.Header.Set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	msg.Header.Set(schemas.HeaderID, id)
	msg.Header.Set(schemas.HeaderRemote, "192.0.2.7:40000")
	msg.Header.Set(schemas.HeaderReply, reply)
	msg.Reply = reply
	if err := g.nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	capture := &nats.Msg{Subject: schemas.CaptureSubject(schemas.DefaultPrefix, msg.Subject), Header: msg.Header, Data: msg.Data}
	if _, err := g.js.PublishMsg(ctx, capture); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := g.replies.NextMsgWithContext(ctx)
		if errors.Is(err, nats.ErrNoResponders) {
			continue // no direct group received the request: NATS says so
		}
		if err != nil {
			t.Fatalf("no reply: %v", err)
		}
		if m.Subject != reply {
			t.Fatalf("reply on %s, want %s", m.Subject, reply)
		}
		return m
	}
}
