package observe_test

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestMetricsPushAndMore: the pushes a push=on listener sent and refused,
// and the replies with more to follow, are in the gateway's metrics.
func TestMetricsPushAndMore(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	conn := listen(t)
	g := &gateway.Gateway{DrainTimeout: -1, NATS: nc, Node: "n1", Stream: ingress.StreamConfig{Memory: true},
		Listeners: []gateway.Listener{{Conn: conn, Protocol: schemas.ProtocolRaw, Push: true}}}
	reg := observe.NewRegistry()
	if err := observe.RegisterGateway(reg, g); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	<-g.Ready()
	p := port(conn)
	// A worker that answers with two replies with more to follow, then
	// the last.
	wc := natstest.Connect(t, s)
	if _, err := wc.Subscribe(schemas.InSubject(schemas.DefaultPrefix, p), func(m *nats.Msg) {
		for _, more := range []bool{true, true, false} {
			r := &nats.Msg{Subject: m.Reply, Data: []byte("part"), Header: nats.Header{}}
			if more {
				r.Header.Set(schemas.HeaderMore, "1")
			}
			wc.PublishMsg(r)
		}
	}); err != nil {
		t.Fatal(err)
	}
	wc.Flush()

	c := sendTo(t, conn, []byte("hello"))
	buf := make([]byte, 64)
	for range 3 {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	dest := c.LocalAddr().(*net.UDPAddr).AddrPort()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if err := workers.SendDatagram(pctx, nc, "", g.Node, p, dest, []byte("pushed")); err != nil {
		t.Fatal(err)
	}
	if err := workers.SendDatagram(pctx, nc, "", g.Node, p, netip.MustParseAddrPort("127.0.0.1:9"), []byte("x")); err == nil {
		t.Fatal("a push to a stranger was sent")
	}
	ps := strconv.Itoa(int(p))
	for deadline := time.Now().Add(10 * time.Second); ; {
		m := gather(t, reg)
		ok := value(m, "udpgate_pushes_sent_total", "port", ps, "protocol", "raw") == 1 &&
			value(m, "udpgate_pushes_refused_total", "port", ps, "reason", schemas.OutErrNotPeer) == 1 &&
			value(m, "udpgate_pushes_refused_total", "port", ps, "reason", schemas.OutErrRate) == 0 &&
			value(m, "udpgate_replies_more_total", "port", ps, "kind", "sent") == 2 &&
			value(m, "udpgate_replies_more_total", "port", ps, "kind", "final") == 0 &&
			value(m, "udpgate_datagrams_answered_total", "port", ps) == 1
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics: pushed %v, refused %v, more %v, answered %v",
				value(m, "udpgate_pushes_sent_total", "port", ps), value(m, "udpgate_pushes_refused_total", "port", ps, "reason", schemas.OutErrNotPeer),
				value(m, "udpgate_replies_more_total", "port", ps, "kind", "sent"), value(m, "udpgate_datagrams_answered_total", "port", ps))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func gather(t *testing.T, reg interface {
	Gather() ([]*dto.MetricFamily, error)
}) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}
