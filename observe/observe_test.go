package observe_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
)

// rig is a gateway with a raw echo port (a workers.Server), a raw port
// whose replies come after the deadline, a coap port and an rpc port,
// with its metrics served over HTTP.
type rig struct {
	url                   string // of the metrics server
	echo, late, coap, rpc *net.UDPConn
	g                     *gateway.Gateway
}

// rigDiscovery is how often a rig's gateway asks the worker groups what
// they serve: short, so that tests see groups come and go soon, and long
// enough for a loaded machine to answer within a poll's window (half).
const rigDiscovery = 500 * time.Millisecond

func listen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func port(c *net.UDPConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) }

func newRig(t *testing.T, nc *nats.Conn, deadline time.Duration, memory bool) *rig {
	t.Helper()
	r := &rig{echo: listen(t), late: listen(t), coap: listen(t), rpc: listen(t)}
	r.g = &gateway.Gateway{
		DrainTimeout:      -1, // stop at once when the test ends
		NATS:              nc,
		Node:              "n1",
		Stream:            ingress.StreamConfig{Memory: memory},
		Deadline:          deadline,
		MaxDatagram:       64,
		DiscoveryInterval: rigDiscovery,
		Listeners: []gateway.Listener{
			{Conn: r.echo, Protocol: schemas.ProtocolRaw},
			{Conn: r.late, Protocol: schemas.ProtocolRaw},
			{Conn: r.coap, Protocol: schemas.ProtocolCoAP},
			{Conn: r.rpc, Protocol: schemas.ProtocolRPC},
		},
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	obs := &observe.Server{Registry: observe.NewRegistry()}
	if err := observe.RegisterNATS(obs.Registry, nc); err != nil {
		t.Fatal(err)
	}
	if err := observe.RegisterGateway(obs.Registry, r.g); err != nil {
		t.Fatal(err)
	}
	obs.AddCheck("nats", observe.NATSConnected(nc))
	obs.AddCheck("gateway", observe.GatewayServing(r.g))
	obs.AddCheck("capture", observe.StreamReachable(js, schemas.StreamIn, time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	ln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.url = observe.URL(ln)
	httpDone := make(chan error, 1)
	go func() { httpDone <- obs.Serve(ctx, ln) }()
	gwDone := make(chan error, 1)
	go func() { gwDone <- r.g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-gwDone; err != nil {
			t.Errorf("gateway: %v", err)
		}
		if err := <-httpDone; err != nil {
			t.Errorf("http: %v", err)
		}
	})
	select {
	case <-r.g.Ready():
	case err := <-gwDone:
		t.Fatalf("gateway: %v", err)
	}
	return r
}

// scrape GETs /metrics and parses the text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return mfs
}

// value returns the value of the sample of name whose labels include
// labels (pairs), or -1 if there is none. Histograms give their count.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// eventually scrapes until cond holds, for up to 20 seconds.
func eventually(t *testing.T, url, what string, cond func(map[string]*dto.MetricFamily) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		mfs := scrape(t, url)
		if cond(mfs) {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, mf := range mfs {
				if strings.HasPrefix(mf.GetName(), "udpgate_") {
					expfmt.MetricFamilyToText(&b, mf)
				}
			}
			t.Fatalf("%s: not after 20s; metrics:\n%s", what, b.String())
		}
		<-tick.C
	}
}

func sendTo(t *testing.T, c *net.UDPConn, b []byte) *net.UDPConn {
	t.Helper()
	cl, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	if _, err := cl.Write(b); err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestMetricsEndToEnd scrapes /metrics while a good datagram, an oversize
// one, a malformed CoAP one and one answered after its deadline go
// through a real gateway, and sees each one's counters move.
func TestMetricsEndToEnd(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	r := newRig(t, nc, 300*time.Millisecond, true)

	// The echo worker, with its own metrics.
	_, js := natstest.JetStream(t, s)
	w := &workers.Server{
		JetStream: js, Group: "echo", Subjects: []string{schemas.InSubject(schemas.DefaultPrefix, port(r.echo))},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, req *workers.Request) error {
			_, err := w.Write(req.Body)
			return err
		}),
	}
	wobs := &observe.Server{Registry: observe.NewRegistry()}
	if err := observe.RegisterWorkers(wobs.Registry, w); err != nil {
		t.Fatal(err)
	}
	wobs.AddCheck("worker", observe.WorkerBound(w, time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	wln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wurl := observe.URL(wln)
	done := make(chan error, 2)
	go func() { done <- w.Serve(ctx) }()
	go func() { done <- wobs.Serve(ctx, wln) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
	<-w.Ready()

	// The late worker answers each request once its deadline has passed.
	sub, err := nc.Subscribe(schemas.InSubject(schemas.DefaultPrefix, port(r.late)), func(m *nats.Msg) {
		ms, _ := strconv.ParseInt(m.Header.Get(schemas.HeaderDeadline), 10, 64)
		reply := &nats.Msg{Subject: m.Header.Get(schemas.HeaderReply), Header: nats.Header{schemas.HeaderID: {m.Header.Get(schemas.HeaderID)}}, Data: []byte("too late")}
		time.AfterFunc(time.Until(time.UnixMilli(ms))+50*time.Millisecond, func() { nc.PublishMsg(reply) })
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })

	echoPort, latePort, coapPort := strconv.Itoa(int(port(r.echo))), strconv.Itoa(int(port(r.late))), strconv.Itoa(int(port(r.coap)))
	before := scrape(t, r.url)
	for _, name := range []string{"udpgate_datagrams_received_total", "udpgate_datagrams_answered_total"} {
		if v := value(before, name, "port", echoPort, "protocol", "raw"); v != 0 {
			t.Errorf("%s before any traffic = %v, want 0", name, v)
		}
	}

	// A good datagram: received, published, answered, latency observed.
	cl := sendTo(t, r.echo, []byte("hello"))
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	if n, err := cl.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("echo reply %q, %v", buf[:n], err)
	}
	eventually(t, r.url, "good datagram counted", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_datagrams_received_total", "port", echoPort) == 1 &&
			value(m, "udpgate_datagrams_published_total", "port", echoPort) == 1 &&
			value(m, "udpgate_datagrams_answered_total", "port", echoPort) == 1 &&
			value(m, "udpgate_request_duration_seconds", "port", echoPort, "protocol", "raw") == 1
	})
	eventually(t, wurl, "worker handled", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_worker_handled_total", "group", "echo") == 1 &&
			value(m, "udpgate_worker_handler_duration_seconds", "group", "echo") == 1 &&
			value(m, "udpgate_worker_failed_total", "group", "echo") == 0 &&
			value(m, "udpgate_worker_expired_total", "group", "echo") == 0
	})

	// An oversize datagram: dropped as too large.
	sendTo(t, r.echo, make([]byte, 65))
	eventually(t, r.url, "oversize datagram counted", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_datagrams_received_total", "port", echoPort) == 2 &&
			value(m, "udpgate_datagrams_dropped_total", "port", echoPort, "reason", "too_large") == 1
	})

	// A malformed CoAP datagram (version 0).
	sendTo(t, r.coap, []byte{0x00, 0x01, 0x00, 0x01})
	eventually(t, r.url, "malformed CoAP counted", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_datagrams_received_total", "port", coapPort, "protocol", "coap") == 1 &&
			value(m, "udpgate_datagrams_dropped_total", "port", coapPort, "protocol", "coap", "reason", "malformed") == 1
	})

	// A reply after the deadline: no answer, then a late reply.
	sendTo(t, r.late, []byte("slow"))
	eventually(t, r.url, "late reply counted", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_datagrams_published_total", "port", latePort) == 1 &&
			value(m, "udpgate_datagrams_dropped_total", "port", latePort, "reason", "no_answer") == 1 &&
			value(m, "udpgate_datagrams_dropped_total", "port", latePort, "reason", "late_reply") == 1 &&
			value(m, "udpgate_datagrams_answered_total", "port", latePort) == 0
	})

	m := scrape(t, r.url)
	if v := value(m, "udpgate_nats_connected"); v != 1 {
		t.Errorf("udpgate_nats_connected = %v, want 1", v)
	}
	if v := value(m, "udpgate_pending_exchanges"); v != 0 {
		t.Errorf("udpgate_pending_exchanges = %v, want 0", v)
	}
	if v := value(m, "udpgate_datagrams_dropped_total", "port", echoPort, "reason", "rcvbuf_overflow"); v != 0 {
		t.Errorf("rcvbuf_overflow = %v, want 0", v)
	}
	if code, body := get(t, wurl+"/readyz"); code != http.StatusOK {
		t.Errorf("worker /readyz: %d %s", code, body)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitReady polls /readyz until its status is code and its body contains
// want, for up to 30 seconds.
func waitReady(t *testing.T, url string, code int, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, body := get(t, url+"/readyz")
		if c == code && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d after 30s, want %d and %q: %s", c, code, want, body)
		}
		<-tick.C
	}
}

// TestReadyzFollowsNATS stops the NATS server under a running gateway and
// starts it again on the same port and store: /readyz turns not ready,
// with the reason, and ready again, without restarting the gateway.
func TestReadyzFollowsNATS(t *testing.T) {
	opts := natstest.Options(t)
	s := natstest.Start(t, opts)
	nc := natstest.Connect(t, s, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectBufSize(-1))
	r := newRig(t, nc, time.Second, false) // file storage: the capture survives the restart

	if code, body := get(t, r.url+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	waitReady(t, r.url, http.StatusOK, "ready")

	s.Shutdown()
	s.WaitForShutdown()
	waitReady(t, r.url, http.StatusServiceUnavailable, "not ready: nats: connection is RECONNECTING")
	if code, _ := get(t, r.url+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while NATS is down: %d", code)
	}
	eventually(t, r.url, "NATS down in metrics", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_nats_connected") == 0
	})

	natstest.Restart(t, s, opts)
	waitReady(t, r.url, http.StatusOK, "ready")
	eventually(t, r.url, "NATS back in metrics", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_nats_connected") == 1 && value(m, "udpgate_nats_reconnects_total") >= 1
	})
}

// TestMetricsWorkerGroups scrapes a worker group as the gateway sees it:
// a direct group's instance counts once it answers discovery, its
// requests, errors and mean handling time follow what it announces, and
// its series go once it stops.
func TestMetricsWorkerGroups(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	r := newRig(t, nc, 5*time.Second, true)
	_, js := natstest.JetStream(t, s)
	w := &workers.Server{
		JetStream: js, Delivery: workers.Direct, Group: "echo",
		Subjects: []string{schemas.InSubject(schemas.DefaultPrefix, port(r.echo))},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, req *workers.Request) error {
			if string(req.Body) == "fail" {
				return errors.New("failing on request")
			}
			_, err := w.Write(req.Body)
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker: %v", err)
	}

	eventually(t, r.url, "the group's instance discovered", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_worker_instances", "group", "echo", "delivery", "direct") == 1 &&
			value(m, "udpgate_worker_group_requests", "group", "echo") == 0 &&
			value(m, "udpgate_worker_group_errors", "group", "echo") == 0 &&
			value(m, "udpgate_worker_group_processing_seconds", "group", "echo") == 0
	})

	// One request answered, one the handler fails (a raw listener sends
	// nothing for it).
	cl := sendTo(t, r.echo, []byte("hello"))
	cl.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	if n, err := cl.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("echo reply %q, %v", buf[:n], err)
	}
	sendTo(t, r.echo, []byte("fail"))
	eventually(t, r.url, "the group's requests announced", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_worker_instances", "group", "echo", "delivery", "direct") == 1 &&
			value(m, "udpgate_worker_group_requests", "group", "echo") == 2 &&
			value(m, "udpgate_worker_group_errors", "group", "echo") == 1 &&
			value(m, "udpgate_worker_group_processing_seconds", "group", "echo") > 0
	})

	// The instance stops: after two polls without its answer, the group
	// is gone, and so are its series.
	stop()
	eventually(t, r.url, "the group forgotten", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_worker_instances", "group", "echo") == -1 &&
			value(m, "udpgate_worker_group_requests", "group", "echo") == -1 &&
			value(m, "udpgate_worker_group_errors", "group", "echo") == -1 &&
			value(m, "udpgate_worker_group_processing_seconds", "group", "echo") == -1
	})
}

// TestMetricsUnserved sends a CoAP and an RPC request that no group
// serves: the gateway answers them at once, 4.04 and
// STATUS_UNIMPLEMENTED, and counts them unserved.
func TestMetricsUnserved(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	r := newRig(t, nc, 5*time.Second, true)
	coapPort, rpcPort := strconv.Itoa(int(port(r.coap))), strconv.Itoa(int(port(r.rpc)))

	m := scrape(t, r.url)
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"udpgate_requests_unserved_total", []string{"port", coapPort, "protocol", "coap"}},
		{"udpgate_requests_unserved_total", []string{"port", rpcPort, "protocol", "rpc"}},
		{"udpgate_requests_unserved_total", []string{"port", strconv.Itoa(int(port(r.echo))), "protocol", "raw"}},
		{"udpgate_coap_messages_total", []string{"port", coapPort, "kind", "not_found"}},
		{"udpgate_rpc_replies_total", []string{"port", rpcPort, "kind", "unimplemented"}},
	} {
		if v := value(m, c.name, c.labels...); v != 0 {
			t.Errorf("%s%v before any request = %v, want 0", c.name, c.labels, v)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// One copy of each request: a retransmission is not a second request.
	opts := client.Options{Wait: 15 * time.Second, Timeout: 15 * time.Second}
	do := func(url string) client.Result {
		t.Helper()
		c, err := client.Dial(ctx, url, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		res, err := c.Do(ctx, nil)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		return res
	}
	if res := do("coap://" + r.coap.LocalAddr().String() + "/nothing/here"); res.Code != uint8(codes.NotFound) {
		t.Errorf("CoAP GET /nothing/here: code %d.%02d, want 4.04", res.Code>>5, res.Code&31)
	}
	if res := do("rpc://" + r.rpc.LocalAddr().String() + "/Nobody/Home"); res.Status != rpcpb.Status_STATUS_UNIMPLEMENTED {
		t.Errorf("RPC Nobody/Home: %v %q, want STATUS_UNIMPLEMENTED", res.Status, res.Error)
	}
	eventually(t, r.url, "unserved requests counted", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_requests_unserved_total", "port", coapPort, "protocol", "coap") == 1 &&
			value(m, "udpgate_coap_messages_total", "port", coapPort, "kind", "not_found") == 1 &&
			value(m, "udpgate_requests_unserved_total", "port", rpcPort, "protocol", "rpc") == 1 &&
			value(m, "udpgate_rpc_replies_total", "port", rpcPort, "kind", "unimplemented") == 1 &&
			value(m, "udpgate_datagrams_dropped_total", "port", coapPort, "reason", "no_answer") == 0 &&
			value(m, "udpgate_datagrams_dropped_total", "port", rpcPort, "reason", "no_answer") == 0
	})
}

// TestMetricsCaptureDiscarded: a durable group that takes nothing while
// more requests arrive than a 64 KiB capture holds; the requests the
// stream's limits removed are counted udpgate_capture_discarded_total
// when their deadline passes, on top of no_answer.
func TestMetricsCaptureDiscarded(t *testing.T) {
	const requests = 600
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	ln := listen(t)
	g := &gateway.Gateway{
		DrainTimeout: -1,
		NATS:         nc,
		Node:         "n1",
		Stream:       ingress.StreamConfig{MaxBytes: 64 << 10},
		Deadline:     time.Second,
		Listeners:    []gateway.Listener{{Conn: ln, Protocol: schemas.ProtocolRaw}},
	}
	obs := &observe.Server{Registry: observe.NewRegistry()}
	if err := observe.RegisterGateway(obs.Registry, g); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := observe.URL(hln)
	done := make(chan error, 2)
	go func() { done <- obs.Serve(ctx, hln) }()
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
	select {
	case <-g.Ready():
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	}
	p := strconv.Itoa(int(port(ln)))
	if v := value(scrape(t, url), "udpgate_capture_discarded_total", "port", p, "protocol", "raw"); v != 0 {
		t.Errorf("udpgate_capture_discarded_total before any request = %v, want 0", v)
	}

	// The durable group's consumer, from which nobody pulls.
	_, js := natstest.JetStream(t, s)
	jctx, jcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer jcancel()
	if _, err := js.CreateOrUpdateConsumer(jctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable: "paused", FilterSubject: schemas.InSubject(schemas.DefaultPrefix, port(ln)), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	cl, err := net.DialUDP("udp4", nil, ln.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := 0; i < requests; i += 100 {
		for j := i; j < i+100; j++ {
			if _, err := cl.Write([]byte(strconv.Itoa(j))); err != nil {
				t.Fatal(err)
			}
		}
		// Paced by the gateway's reading and the stream's
		// acknowledgements: the socket's buffer never overflows.
		eventually(t, url, "the gateway reads and captures what was sent", func(m map[string]*dto.MetricFamily) bool {
			return value(m, "udpgate_datagrams_received_total", "port", p) >= float64(i+100) &&
				value(m, "udpgate_datagrams_captured_total", "port", p)+value(m, "udpgate_datagrams_dropped_total", "port", p, "reason", "capture_gap") >= float64(i+100)
		})
	}
	eventually(t, url, "every request unanswered", func(m map[string]*dto.MetricFamily) bool {
		return value(m, "udpgate_datagrams_dropped_total", "port", p, "reason", "no_answer") == requests
	})
	str, err := js.Stream(jctx, schemas.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	stored := str.CachedInfo().State.Msgs
	if stored == 0 || stored >= requests/2 {
		t.Fatalf("the capture holds %d of %d requests; the test needs it to hold some, and to have removed many", stored, requests)
	}
	// Each removed request is counted (exactly so: gateway's
	// TestCaptureLimitCountsDiscards); a capture copy JetStream did not
	// acknowledge in time on a loaded machine is a capture_gap instead.
	gaps := float64(g.Stats().Ingress[p+"/raw"].CaptureFailed)
	removed := float64(requests - stored)
	eventually(t, url, "the removed requests counted", func(m map[string]*dto.MetricFamily) bool {
		v := value(m, "udpgate_capture_discarded_total", "port", p, "protocol", "raw")
		return v >= removed-gaps && v > 0 && v == float64(g.Stats().CaptureDiscarded[p+"/raw"])
	})
	if v := value(scrape(t, url), "udpgate_capture_discarded_total", "port", p, "protocol", "raw"); v > removed {
		t.Errorf("udpgate_capture_discarded_total = %v; the stream removed %v", v, removed)
	}
}
