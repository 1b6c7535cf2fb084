package builtin_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// TestServe runs each built-in raw worker behind a workers.Server on a real
// JetStream and sends it a request as the gateway does.
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
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			subject := schemas.InSubject(schemas.DefaultPrefix, 9000)
			g := startGroup(t, tt.name, []string{subject}, tt.handler)
			msg := nats.NewMsg(subject)
			msg.Header.Set(schemas.HeaderListener, "9000/raw")
			msg.Data = []byte(tt.body)
			reply := g.exchange(t, "42", msg)
			if got := string(reply.Data); got != tt.want {
				t.Errorf("reply %q, want %q", got, tt.want)
			}
		})
	}
}

// TestServeCoAP runs the built-in CoAP worker behind a workers.Server that
// takes every CoAP request of its port, and sends it requests as the
// gateway does.
func TestServeCoAP(t *testing.T) {
	const port = 5683
	g := startGroup(t, "coap", []string{schemas.InSubject(schemas.DefaultPrefix, port) + ".>"}, builtin.CoAP())
	tests := []struct {
		name, method, path string
		contentFormat      string // request's; "" for none
		body               string
		code, cf, want     string // reply's code and Content-Format; "" for none
	}{
		{name: "hello", method: "GET", path: "/hello", cf: "0", want: "Hello from udpgate"},
		{name: "echo", method: "POST", path: "/echo", contentFormat: "50", body: `{"a":1}`, cf: "50", want: `{"a":1}`},
		{name: "echo without format", method: "POST", path: "/echo", body: "ping", want: "ping"},
		{name: "time", method: "GET", path: "/time", cf: "0"},
		{name: "unknown path", method: "GET", path: "/nope", code: "4.04"},
		{name: "deeper path", method: "GET", path: "/hello/there", code: "4.04"},
		{name: "root", method: "GET", path: "/", code: "4.04"},
		{name: "other method", method: "DELETE", path: "/hello", code: "4.05"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var segs []string
			if tt.path != "/" {
				segs = strings.Split(tt.path[1:], "/")
			}
			msg := nats.NewMsg(schemas.CoAPSubject(schemas.DefaultPrefix, port, tt.method, segs))
			msg.Header.Set(schemas.HeaderListener, "5683/coap")
			msg.Header.Set(schemas.HeaderType, schemas.TypeCoAP)
			msg.Header.Set(schemas.HeaderCoAPMethod, tt.method)
			msg.Header.Set(schemas.HeaderCoAPPath, tt.path)
			msg.Header.Set(schemas.HeaderCoAPType, "CON")
			msg.Header.Set(schemas.HeaderCoAPMessageID, "1")
			msg.Header.Set(schemas.HeaderCoAPToken, "01")
			if tt.contentFormat != "" {
				msg.Header.Set(schemas.HeaderCoAPContentFormat, tt.contentFormat)
			}
			msg.Data = []byte(tt.body)
			before := time.Now().Truncate(time.Second)
			reply := g.exchange(t, tt.name, msg)
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

// group is a workers.Server serving one built-in worker on a real
// JetStream with the gateway's stream.
type group struct {
	js      jetstream.JetStream
	name    string
	replies *nats.Subscription // the fake gateway's reply subject
}

// startGroup runs h for group name on subjects until the test ends, and
// waits until it pulls.
func startGroup(t *testing.T, name string, subjects []string, h workers.Handler) *group {
	t.Helper()
	srv := natstest.RunServer(t)
	nc, js := natstest.JetStream(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      schemas.StreamIn,
		Subjects:  []string{schemas.InWildcard(schemas.DefaultPrefix)},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	s := &workers.Server{JetStream: js, Group: name, Subjects: subjects, Handler: h}
	serveCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(serveCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	for {
		c, err := js.Consumer(ctx, schemas.StreamIn, name)
		if err == nil && c.CachedInfo().NumWaiting > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("worker not pulling")
		case <-time.After(5 * time.Millisecond):
		}
	}
	replies, err := nc.SubscribeSync(schemas.ReplySubject(schemas.DefaultPrefix, "node1"))
	if err != nil {
		t.Fatal(err)
	}
	return &group{js: js, name: name, replies: replies}
}

// exchange publishes msg as request id and returns the reply.
func (g *group) exchange(t *testing.T, id string, msg *nats.Msg) *nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg.Header.Set(schemas.HeaderID, id)
	msg.Header.Set(schemas.HeaderReply, g.replies.Subject)
	if _, err := g.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	reply, err := g.replies.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	if got := reply.Header.Get(schemas.HeaderID); got != id {
		t.Fatalf("reply %s=%q, want %q", schemas.HeaderID, got, id)
	}
	return reply
}
