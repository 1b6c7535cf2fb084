package workers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestMuxObservable: an Observable route accepts a GET with Observe 0
// that it answers 2.xx, and nothing else; discovery marks it obs.
func TestMuxObservable(t *testing.T) {
	m := workers.NewMux()
	m.Observable("GET /time", patternHandler())
	m.Observable("GET /gone", workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
		workers.NewCoAPResponse(w).SetCode(workers.NotFound)
		return nil
	}))
	m.Route("GET /plain", patternHandler())
	m.Route("GET "+workers.WellKnownCore, m.Discovery(workers.Links{"/time": `rt="time";ct=0`}))
	tests := []struct {
		path    string
		observe int
		want    bool
	}{
		{"time", 0, true},
		{"time", 1, false},  // a deregistration is a GET like any
		{"time", -1, false}, // no Observe option
		{"gone", 0, false},  // 4.04: not registered
		{"plain", 0, false}, // not observable
	}
	for _, tt := range tests {
		r := coapRequest("GET", tt.path)
		r.CoAP.Observe = tt.observe
		var w recorder
		if err := m.Handle(context.Background(), &w, r); err != nil {
			t.Fatal(err)
		}
		if got := w.Header().Get(schemas.HeaderCoAPObserve) != ""; got != tt.want {
			t.Errorf("GET /%s with Observe %d: accepted %v, want %v", tt.path, tt.observe, got, tt.want)
		}
	}
	r := coapRequest("GET", ".well-known", "core")
	r.CoAP.Observe = -1
	var w recorder
	if err := m.Handle(context.Background(), &w, r); err != nil {
		t.Fatal(err)
	}
	if got, want := w.body.String(), `</gone>;obs,</plain>,</time>;obs;rt="time";ct=0`; got != want {
		t.Errorf("discovery %s, want %s", got, want)
	}
}

// TestObserveHeaderParsed: the request header of an Observe option is
// CoAPRequest.Observe, -1 without it.
func TestObserveHeaderParsed(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	got := make(chan int, 2)
	srv := &workers.Server{
		NATS: nc, Group: "observe-parse", Subjects: []string{"udpgate.in.5683.GET.>"},
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			got <- r.CoAP.Observe
			w.Write(nil)
			return nil
		}),
	}
	start(t, srv)
	for _, v := range []string{"0", ""} {
		m := nats.NewMsg("udpgate.in.5683.GET.time")
		m.Header.Set(schemas.HeaderType, schemas.TypeCoAP)
		m.Header.Set(schemas.HeaderCoAPRequest, "GET /time")
		m.Header.Set(schemas.HeaderReply, "udpgate.reply.n.1")
		if v != "" {
			m.Header.Set(schemas.HeaderCoAPObserve, v)
		}
		if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		want := -1
		if v == "0" {
			want = 0
		}
		if o := <-got; o != want {
			t.Errorf("header %q: Observe %d, want %d", v, o, want)
		}
	}
}

// TestNotifier: a notification's subject and headers, as the gateway
// reads them, and the count a gateway answers.
func TestNotifier(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	n := &workers.Notifier{NATS: nc, Port: 5683}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := n.NotifyCount(ctx, "/sensors/1", workers.Representation{ContentFormat: -1}); !errors.Is(err, workers.ErrNoObservers) {
		t.Fatalf("no gateway: %v", err)
	}
	sub, err := nc.Subscribe(schemas.NotifyWildcard(schemas.DefaultPrefix, 5683), func(m *nats.Msg) {
		a := nats.NewMsg(m.Reply)
		a.Header.Set(schemas.HeaderCoAPObservers, "3")
		m.RespondMsg(a)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	seen, err := nc.SubscribeSync(schemas.NotifyWildcard(schemas.DefaultPrefix, 5683))
	if err != nil {
		t.Fatal(err)
	}
	rep := workers.Representation{Code: workers.Content, ContentFormat: 50, MaxAge: 30 * time.Second, ETag: []byte{1, 2}, Body: []byte(`{"t":21.5}`)}
	count, err := n.NotifyCount(ctx, "/sensors/a%2Fb", rep)
	if err != nil || count != 3 {
		t.Fatalf("count %d, %v", count, err)
	}
	m, err := seen.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Header
	if m.Subject != schemas.NotifySubject(schemas.DefaultPrefix, 5683, []string{"sensors", "a/b"}) || string(m.Data) != `{"t":21.5}` ||
		h.Get(schemas.HeaderCoAPCode) != "2.05" || h.Get(schemas.HeaderCoAPContentFormat) != "50" ||
		h.Get(schemas.HeaderCoAPMaxAge) != "30" || h.Get(schemas.HeaderCoAPETag) != "0102" {
		t.Errorf("notification %s %v %q", m.Subject, h, m.Data)
	}
	if err := n.Notify(ctx, "/time", workers.Representation{ContentFormat: -1, Body: []byte("now")}); err != nil {
		t.Fatal(err)
	}
	if m, err := seen.NextMsg(5 * time.Second); err != nil || m.Subject != "udpgate.notify.5683.time" || len(m.Header) != 0 {
		t.Errorf("notification %v, %v", m, err)
	}
	for _, bad := range []struct {
		resource string
		rep      workers.Representation
	}{
		{"time", workers.Representation{ContentFormat: -1}},
		{"/time", workers.Representation{ContentFormat: -1, Code: "9.99"}},
		{"/time", workers.Representation{ContentFormat: -1, ETag: make([]byte, 9)}},
		{"/time", workers.Representation{ContentFormat: 70000}},
	} {
		if err := n.Notify(ctx, bad.resource, bad.rep); err == nil {
			t.Errorf("Notify(%q, %+v) took it", bad.resource, bad.rep)
		}
	}
}
