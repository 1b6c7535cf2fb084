//go:build unix

package cli

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestGatewayHandoverObserve: go-coap's client observes a resource of a
// `udpgate gateway`, which a new process replaces (UDPGATE_HANDOVER);
// the new one reads the registration back from the Observe bucket, and
// the client gets the next notification, with a fresher sequence number,
// without registering again.
func TestGatewayHandoverObserve(t *testing.T) {
	ns := natstest.RunServer(t)
	port := freeUDPPort(t)
	authEnv(t, map[string]string{
		"UDPGATE_NATS_URL": ns.ClientURL(), "UDPGATE_NODE": "n1",
		"UDPGATE_LISTENERS":               "127.0.0.1:" + strconv.Itoa(int(port)) + "/coap",
		"UDPGATE_HANDOVER":                filepath.Join(t.TempDir(), "handover.sock"),
		"UDPGATE_STREAM_STORAGE":          "memory",
		"UDPGATE_DISCOVERY_SUBSCRIPTIONS": "off",
	})
	// A worker written against the contract: GET /sensors/1 is
	// observable.
	nc := natstest.Connect(t, ns)
	if _, err := nc.Subscribe(schemas.CoAPSubject(schemas.DefaultPrefix, port, "GET", []string{"sensors", "1"}), func(m *nats.Msg) {
		r := nats.NewMsg("")
		if m.Header.Get(schemas.HeaderCoAPObserve) == schemas.CoAPObserveRegister {
			r.Header.Set(schemas.HeaderCoAPObserve, "1")
		}
		r.Data = []byte("registered")
		m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	t.Setenv("UDPGATE_HTTP_LISTEN", "127.0.0.1:"+strconv.Itoa(int(freeTCPPort(t))))
	old := start(t, "udpgate gateway:", "gateway")

	co, err := coapudp.Dial(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type notification struct {
		body string
		seq  uint32
	}
	got := make(chan notification, 16)
	obs, err := co.Observe(ctx, "/sensors/1", func(m *pool.Message) {
		body, _ := m.ReadBody()
		seq, _ := m.Observe()
		got <- notification{string(body), seq}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Cancel(context.Background())
	receive := func(want string) notification {
		t.Helper()
		select {
		case v := <-got:
			if v.body != want {
				t.Fatalf("received %q, want %q", v.body, want)
			}
			return v
		case <-ctx.Done():
			t.Fatalf("%q not received", want)
		}
		return notification{}
	}
	// notify publishes body as the new representation and reports
	// whether a gateway notified one observer; false if none serves the
	// port yet, or its listener has subscribed but not yet restored the
	// observer (it counts 0).
	notify := func(body string) bool {
		m := nats.NewMsg(schemas.NotifySubject(schemas.DefaultPrefix, port, []string{"sensors", "1"}))
		m.Data = []byte(body)
		r, err := nc.RequestMsg(m, 10*time.Second)
		if errors.Is(err, nats.ErrNoResponders) {
			return false
		}
		if err != nil {
			t.Fatalf("notify %q: %v", body, err)
		}
		switch n := r.Header.Get(schemas.HeaderCoAPObservers); n {
		case "1":
			return true
		case "0":
			return false
		default:
			t.Fatalf("notify %q: %s %q", body, schemas.HeaderCoAPObservers, n)
		}
		return false
	}
	receive("registered")
	if !notify("before") {
		t.Fatal("no gateway took the notification")
	}
	before := receive("before")
	// The registration reaches the bucket after its response.
	nf := &workers.Notifier{NATS: nc, Port: port}
	waitFor(t, "the registration in the bucket", func() bool {
		ok, err := nf.Observed(ctx, "/sensors/1")
		return err == nil && ok
	}, old.done, &old.out, &old.err)

	replacement := start(t, "udpgate gateway:", "gateway")
	select {
	case err := <-old.done:
		if err != nil {
			t.Errorf("the old gateway: %v", err)
		}
		old.done <- err // for its cleanup
	case <-ctx.Done():
		t.Fatal("the old gateway did not stop after the hand-over")
	}
	waitFor(t, "the new gateway's notify subscriptions", func() bool { return notify("after") },
		replacement.done, &replacement.out, &replacement.err)
	after := receive("after")
	if !(before.seq < after.seq && after.seq-before.seq < 1<<23 || before.seq > after.seq && before.seq-after.seq > 1<<23) {
		t.Fatalf("sequence number %d after the hand-over is not fresher than %d", after.seq, before.seq)
	}
}
