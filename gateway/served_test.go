package gateway

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// servedNode is a gateway with a coap and an rpc listener, served by the
// built-in coap and places groups as `udpgate run` runs them (their own
// resources only), that asks the groups what they serve every 200 ms.
type servedNode struct {
	s         *server.Server
	g         *Gateway
	coap, rpc *net.UDPAddr
	coapPort  uint16
}

func newServedNode(t *testing.T) *servedNode {
	t.Helper()
	n := &servedNode{s: natstest.RunServer(t)}
	n.g = &Gateway{Deadline: 5 * time.Second, DiscoveryInterval: 200 * time.Millisecond, Subscriptions: EmbeddedSubscriptions(n.s)}
	n.coap = coapListener(t, n.g)
	rpcConn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	n.g.Listeners = append(n.g.Listeners, Listener{Conn: rpcConn, Protocol: schemas.ProtocolRPC})
	n.rpc = rpcConn.LocalAddr().(*net.UDPAddr)
	n.coapPort = uint16(n.coap.Port)
	testGateway(t, n.s, n.g)
	for _, name := range []string{"coap", "places"} {
		port := n.coapPort
		if name == "places" {
			port = uint16(n.rpc.Port)
		}
		h, _ := builtin.Lookup(name)
		n.group(t, name, builtin.Subjects(name, "udpgate", port), h)
	}
	return n
}

// group serves h as the direct group name on subjects until the test ends,
// and returns a function that stops it first.
func (n *servedNode) group(t *testing.T, name string, subjects []string, h workers.Handler) (stop func()) {
	t.Helper()
	_, js := natstest.JetStream(t, n.s)
	w := &workers.Server{JetStream: js, Group: name, Subjects: subjects, Handler: h}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Serve(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("group %s: %v", name, err)
		}
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		<-done
	})
	t.Cleanup(stop)
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("group %s not ready after 10 s", name)
	}
	return stop
}

// muxGroup serves a group whose Mux answers each path of bodies with its
// body, and announces links.
func (n *servedNode) muxGroup(t *testing.T, name string, bodies map[string]string, links workers.Links) (handled *atomic.Int64, stop func()) {
	t.Helper()
	handled = new(atomic.Int64)
	m := workers.NewMux()
	for pattern, body := range bodies {
		m.RouteFunc(pattern, func(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
			handled.Add(1)
			_, err := w.Write([]byte(body))
			return err
		})
	}
	m.SetLinks(links)
	return handled, n.group(t, name, m.Subjects("udpgate", n.coapPort), m)
}

// get sends a CoAP GET (or another method) and returns code and body.
func coapDo(t *testing.T, co *client.Conn, method codes.Code, path string, payload []byte) (codes.Code, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := co.NewGetRequest(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	req.SetCode(method)
	if payload != nil {
		req.SetContentFormat(message.TextPlain)
		req.SetBody(bytes.NewReader(payload))
	}
	resp, err := co.Do(req)
	if err != nil {
		t.Fatalf("%v %s: %v", method, path, err)
	}
	body, _ := resp.ReadBody()
	return resp.Code(), string(body)
}

// TestPlainSubscriberNextToBuiltins: a plain nats.go queue subscription
// that announces nothing, serving POST /reverse on the port of the
// built-in coap group, answers every request; the gateway never answers
// one of them 4.04, and the built-in resources are still served.
func TestPlainSubscriberNextToBuiltins(t *testing.T) {
	n := newServedNode(t)
	subject := schemas.CoAPSubject("udpgate", n.coapPort, "POST", []string{"reverse"})
	var got atomic.Int64
	contractWorker(t, n.s, "reverse", subject, func(m *nats.Msg) []byte {
		got.Add(1)
		b := slices.Clone(m.Data)
		slices.Reverse(b)
		return b
	})
	co := dialCoAP(t, n.coap.String())
	const requests = 200
	for i := range requests {
		code, body := coapDo(t, co, codes.POST, "/reverse", []byte("abc"+itoa(i)))
		want := []byte("abc" + itoa(i))
		slices.Reverse(want)
		if code != codes.Content || body != string(want) {
			t.Fatalf("POST /reverse %d: %v %q, want 2.05 %q", i, code, body, want)
		}
	}
	if code, body := coapDo(t, co, codes.GET, "/hello", nil); code != codes.Content || body != "Hello from udpgate" {
		t.Errorf("GET /hello: %v %q", code, body)
	}
	st := n.g.Stats()
	for name, c := range st.CoAP {
		if c.NotFound != 0 || c.Timeouts != 0 {
			t.Errorf("%s: %d 4.04 and %d 5.04 from the gateway, want none", name, c.NotFound, c.Timeouts)
		}
	}
	if got.Load() != requests {
		t.Errorf("the plain subscriber handled %d of %d", got.Load(), requests)
	}
}

// TestTwoGroupsOnePort: two groups on one coap port, next to the built-in
// one, each serving its own resources, each get exactly their requests:
// 1,000 requests, none lost to another group.
func TestTwoGroupsOnePort(t *testing.T) {
	n := newServedNode(t)
	alpha, _ := n.muxGroup(t, "alpha", map[string]string{"GET /a": "from alpha"}, workers.Links{"/a": `rt="alpha"`})
	beta, _ := n.muxGroup(t, "beta", map[string]string{"GET /b/{id}": "from beta"}, nil)
	const requests = 1000
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for c := range 4 {
		wg.Go(func() {
			co := dialCoAP(t, n.coap.String())
			for i := c; i < requests; i += 4 {
				path, want := "/a", "from alpha"
				if i%2 == 1 {
					path, want = "/b/"+itoa(i), "from beta"
				}
				if code, body := coapDo(t, co, codes.GET, path, nil); code != codes.Content || body != want {
					if wrong.Add(1) <= 5 {
						t.Errorf("GET %s: %v %q, want 2.05 %q", path, code, body, want)
					}
				}
			}
		})
	}
	wg.Wait()
	if a, b := alpha.Load(), beta.Load(); a != requests/2 || b != requests/2 || wrong.Load() != 0 {
		t.Errorf("alpha handled %d, beta %d, %d wrong answers; want %d, %d, 0", a, b, wrong.Load(), requests/2, requests/2)
	}
}

// TestUnservedOnAServedPort: on a port with groups, a path nobody serves
// is answered 4.04, and a path served with other methods 4.05, both long
// before the deadline; an unserved method of a served RPC service gets
// STATUS_UNIMPLEMENTED as fast. Nothing waits for the deadline.
func TestUnservedOnAServedPort(t *testing.T) {
	n := newServedNode(t)
	co := dialCoAP(t, n.coap.String())
	if err := n.g.Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		method codes.Code
		path   string
		want   codes.Code
	}{
		{codes.GET, "/nobody", codes.NotFound},
		{codes.GET, "/time/deeper", codes.NotFound},
		{codes.POST, "/time", codes.MethodNotAllowed},
		{codes.GET, "/echo", codes.MethodNotAllowed},
		{codes.DELETE, "/.well-known/core", codes.MethodNotAllowed},
	} {
		sent := time.Now()
		code, _ := coapDo(t, co, tt.method, tt.path, nil)
		took := time.Since(sent)
		if code != tt.want {
			t.Errorf("%v %s: %v, want %v", tt.method, tt.path, code, tt.want)
		}
		if took > n.g.Deadline/5 {
			t.Errorf("%v %s: answered after %v, more than a fifth of the %v deadline", tt.method, tt.path, took, n.g.Deadline)
		}
	}
	sent := time.Now()
	r := call(t, n.rpc, envelope(t, 9, builtin.PlacesService, "Nope", nil), n.g.Deadline)
	if r == nil || r.Id != 9 || r.Status.String() != "STATUS_UNIMPLEMENTED" {
		t.Errorf("rpc %s/Nope: %v, want STATUS_UNIMPLEMENTED", builtin.PlacesService, r)
	}
	if took := time.Since(sent); took > n.g.Deadline/5 {
		t.Errorf("rpc: answered after %v, more than a fifth of the %v deadline", took, n.g.Deadline)
	}
	if r := call(t, n.rpc, envelope(t, 10, builtin.PlacesService, builtin.PlacesMethod, &placespb.GetRandomRequest{Limit: 1}), n.g.Deadline); r == nil || r.Status.String() != "STATUS_OK" {
		t.Errorf("rpc %s/%s: %v", builtin.PlacesService, builtin.PlacesMethod, r)
	}
	waitFor(t, "six requests counted unserved", func() bool { return n.g.Stats().Egress.Unserved == 6 })
	if st := n.g.Stats(); st.Egress.NoAnswer != 0 || st.Egress.Unserved != 6 {
		t.Errorf("egress %+v, want 6 unserved and none unanswered", st.Egress)
	}
}

// TestMergedDiscovery: the gateway answers GET /.well-known/core with every
// group's resources on the port, honours RFC 6690 filters, and forgets a
// group that stops within the documented staleness (two discovery
// intervals and a poll's window). Both go-coap's client and libcoap's
// coap-client see the merged list.
func TestMergedDiscovery(t *testing.T) {
	n := newServedNode(t)
	n.muxGroup(t, "alpha", map[string]string{"GET /a": "from alpha"}, workers.Links{"/a": `rt="alpha sensor";ct=0`})
	_, stopBeta := n.muxGroup(t, "beta", map[string]string{"GET /b": "from beta", "PUT /b": ""}, workers.Links{"/b": `rt="beta";if="core.a"`})
	// A plain subscriber that announces nothing is listed with its path
	// only, from the subscriptions NATS reports.
	contractWorker(t, n.s, "plain", schemas.CoAPSubject("udpgate", n.coapPort, "POST", []string{"reverse"}), func(*nats.Msg) []byte { return []byte("x") })
	if err := n.g.Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	const all = `</a>;rt="alpha sensor";ct=0,</b>;rt="beta";if="core.a",</echo>;rt="echo",</hello>;rt="hello";ct=0,</reverse>,</time>;obs;rt="time";ct=0`
	co := dialCoAP(t, n.coap.String())
	discover := func(query string) (codes.Code, string, message.MediaType) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var opts message.Options
		if query != "" {
			opts = append(opts, message.Option{ID: message.URIQuery, Value: []byte(query)})
		}
		resp, err := co.Get(ctx, WellKnownCore, opts...)
		if err != nil {
			t.Fatalf("GET %s?%s: %v", WellKnownCore, query, err)
		}
		body, _ := resp.ReadBody()
		cf, _ := resp.ContentFormat()
		return resp.Code(), string(body), cf
	}
	for _, tt := range []struct {
		query string
		code  codes.Code
		body  string
	}{
		{"", codes.Content, all},
		{"rt=alpha", codes.Content, `</a>;rt="alpha sensor";ct=0`},
		{"rt=sensor", codes.Content, `</a>;rt="alpha sensor";ct=0`},
		{"rt=beta", codes.Content, `</b>;rt="beta";if="core.a"`},
		{"href=/t*", codes.Content, `</time>;obs;rt="time";ct=0`},
		{"ct=0", codes.Content, `</a>;rt="alpha sensor";ct=0,</hello>;rt="hello";ct=0,</time>;obs;rt="time";ct=0`},
		{"rt=nothing", codes.NotFound, ""},
	} {
		code, body, cf := discover(tt.query)
		if code != tt.code || body != tt.body || code == codes.Content && cf != message.AppLinkFormat {
			t.Errorf("GET %s?%s: %v %q (content-format %v), want %v %q", WellKnownCore, tt.query, code, body, cf, tt.code, tt.body)
		}
	}
	waitFor(t, "seven discovery requests counted", func() bool { return n.g.Stats().Egress.Discovery == 7 })
	if st := n.g.Stats().Egress; st.Discovery != 7 || st.Unserved != 0 {
		t.Errorf("egress %+v, want 7 discovery requests answered and none unserved", st)
	}
	if got := string(libcoap(t, "-m", "get", "coap://"+n.coap.String()+WellKnownCore)); got != all {
		t.Errorf("coap-client GET %s: %q, want %q", WellKnownCore, got, all)
	}
	if got := string(libcoap(t, "-m", "get", "coap://"+n.coap.String()+WellKnownCore+"?rt=beta")); got != `</b>;rt="beta";if="core.a"` {
		t.Errorf("coap-client GET %s?rt=beta: %q", WellKnownCore, got)
	}

	// Staleness: discovery forgets an instance after missedPolls polls
	// without its answer, so a group is gone at most that many intervals
	// and a poll's window after it stops.
	stopBeta()
	stopped := time.Now()
	staleness := missedPolls*n.g.DiscoveryInterval + n.groupsWindow()
	for {
		_, body, _ := discover("")
		if !strings.Contains(body, "</b>") {
			break
		}
		if time.Since(stopped) > 10*staleness {
			t.Fatalf("beta still listed %v after it stopped: %q", time.Since(stopped), body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A test's scheduling adds to what the gateway takes: allow an
	// interval more, no longer a fixed time.
	if took := time.Since(stopped); took > staleness+n.g.DiscoveryInterval {
		t.Errorf("beta dropped from discovery %v after it stopped; the documented staleness is %v", took, staleness)
	}
	if _, body, _ := discover(""); body != `</a>;rt="alpha sensor";ct=0,</echo>;rt="echo",</hello>;rt="hello";ct=0,</reverse>,</time>;obs;rt="time";ct=0` {
		t.Errorf("after beta stopped: %q", body)
	}
	if code, _ := coapDo(t, co, codes.GET, "/b", nil); code != codes.NotFound {
		t.Errorf("GET /b after beta stopped: %v, want 4.04", code)
	}
	// The plain subscriber serves POST /reverse: another method is 4.05.
	if code, _ := coapDo(t, co, codes.GET, "/reverse", nil); code != codes.MethodNotAllowed {
		t.Errorf("GET /reverse: %v, want 4.05", code)
	}
	// Status names it after its queue group, with its subject.
	var plain *Group
	for _, gr := range n.g.Groups() {
		if gr.Name == "plain" {
			plain = &gr
		}
	}
	if plain == nil || plain.Delivery != DeliveryDirect || plain.Announced || plain.Instances != 1 ||
		!slices.Equal(plain.Subjects, []string{schemas.CoAPSubject("udpgate", n.coapPort, "POST", []string{"reverse"})}) {
		t.Errorf("the plain subscriber's group: %+v", plain)
	}
}

// groupsWindow is how long one discovery poll of the node waits.
func (n *servedNode) groupsWindow() time.Duration {
	n.g.mu.Lock()
	defer n.g.mu.Unlock()
	return n.g.groups.window()
}

// TestGroupServesDiscoveryItself: a group that subscribes to GET
// /.well-known/core answers it, not the gateway.
func TestGroupServesDiscoveryItself(t *testing.T) {
	n := newServedNode(t)
	m := workers.NewMux()
	m.RouteFunc("GET /own", func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil })
	m.Route("GET "+workers.WellKnownCore, m.Discovery(workers.Links{"/own": `rt="own"`}))
	n.group(t, "own", m.Subjects("udpgate", n.coapPort), m)
	co := dialCoAP(t, n.coap.String())
	if code, body := coapDo(t, co, codes.GET, WellKnownCore, nil); code != codes.Content || body != `</own>;rt="own"` {
		t.Errorf("GET %s: %v %q, want the group's own answer", WellKnownCore, code, body)
	}
}
