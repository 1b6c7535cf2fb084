package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestClusterSurvivesNodeLoss runs the production shape on a real 3-node
// JetStream cluster: a gateway whose capture and replies streams have 3
// replicas, and a worker group of two instances on other nodes. Every
// request is answered; then the node that leads the capture stream, and
// that the gateway and one worker instance are connected to, is stopped
// without handing anything over, and every request is still answered.
func TestClusterSurvivesNodeLoss(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	n1, n2, n3 := c.Servers[0], c.Servers[1], c.Servers[2]
	// connect gives a client every server, trying them in order, so it
	// reconnects to another when its own goes away.
	connect := func(order ...*server.Server) *nats.Conn {
		t.Helper()
		nc, err := nats.Connect(natstest.URLs(order...), nats.DontRandomize(),
			nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}

	g := &Gateway{
		NATS:     connect(n1, n2, n3),
		Node:     "edge-1",
		Stream:   ingress.StreamConfig{Replicas: 3},
		Replies:  ingress.StreamConfig{Name: schemas.StreamReplies, Replicas: 3},
		Deadline: 2 * time.Second,
	}
	conn, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = []Listener{{Conn: conn, Protocol: schemas.ProtocolRaw}}
	addr := conn.LocalAddr().String()
	port := uint16(conn.LocalAddr().(*net.UDPAddr).Port)
	serveGateway(t, g)

	admin := connect(n2, n3, n1)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{schemas.StreamIn, schemas.StreamReplies} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := js.Stream(ctx, name)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("stream %s has %d replicas, want 3", name, r)
		}
	}

	// The node to stop leads the capture stream: losing it takes a new
	// election, the hardest case for the gateway's publishes.
	c.MoveStreamLeader(t, admin, schemas.StreamIn, n1.Name())

	// The group's consumer is created here, with the configuration the
	// workers would give it: creating a replicated consumer takes the
	// election of its own leader, which now and then outlasts the 5 s API
	// timeout of a worker's first request (a worker process that fails so
	// is restarted by its supervisor; a test has none).
	const group = "echo"
	subject := schemas.InSubject(schemas.DefaultPrefix, port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = js.CreateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable:        group,
		FilterSubjects: []string{subject},
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverNewPolicy,
		AckWait:        time.Second,
	})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex // guards served
		served = map[int]int{}
	)
	for i, order := range [][]*server.Server{{n1, n2, n3}, {n2, n3, n1}} {
		js, err := jetstream.New(connect(order...))
		if err != nil {
			t.Fatal(err)
		}
		serveWorker(t, &workers.Server{
			JetStream: js,
			Group:     group,
			Subjects:  []string{subject},
			AckWait:   time.Second,
			Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
				mu.Lock()
				served[i]++
				mu.Unlock()
				_, err := w.Write(append([]byte("echo:"), r.Body...))
				return err
			}),
		})
	}
	// The group's consumer leader is kept off the node to stop: a pull
	// request held by a consumer leader that crashes is only replaced when
	// the client misses its idle heartbeats, 30 s with nats.go's defaults,
	// longer than this test may take. Losing the stream leader and the
	// clients' server is what this test is about.
	c.MoveConsumerLeader(t, admin, schemas.StreamIn, group, n2.Name())

	const n = 20
	// Before: every request answered at the first try.
	for i := range n {
		want := fmt.Sprintf("before %d", i)
		got, err := exchangeUDP(t, addr, []byte(want), 5*time.Second)
		if err != nil || string(got) != "echo:"+want {
			t.Fatalf("request %q: reply %q, %v", want, got, err)
		}
	}

	stopped := time.Now()
	c.Stop(n1)
	leader := c.StreamLeader(t, schemas.StreamIn)
	waitFor(t, "the gateway reconnected", func() bool {
		return g.NATS.IsConnected() && g.NATS.ConnectedServerName() != n1.Name()
	})
	t.Logf("%s stopped; %s leads %s after %s", n1.Name(), leader.Name(), schemas.StreamIn, time.Since(stopped).Round(time.Millisecond))

	// After: every request answered. A datagram sent while the new leader
	// was not yet current may be dropped as a publish failure, as a UDP
	// client would see a loss; like such a client, this one resends, a
	// bounded number of times.
	const attempts = 5
	retries := 0
	for i := range n {
		want := fmt.Sprintf("after %d", i)
		var (
			got []byte
			err error
		)
		for try := range attempts {
			if got, err = exchangeUDP(t, addr, []byte(want), 2*time.Second); err == nil || !isTimeout(err) {
				break
			}
			if try < attempts-1 {
				retries++
			}
		}
		if err != nil || string(got) != "echo:"+want {
			t.Fatalf("request %q after stopping %s: reply %q, %v (%d attempts)", want, n1.Name(), got, err, attempts)
		}
	}
	mu.Lock()
	t.Logf("after the loss of %s: %d resends for %d requests; instances served %v; gateway %+v",
		n1.Name(), retries, n, served, g.Stats().Ingress)
	mu.Unlock()
}

// serveWorker serves w until the test ends and waits until it is ready.
func serveWorker(t testing.TB, w *workers.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var err error // set before done is closed
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = w.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			t.Errorf("worker Serve: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case <-done:
		t.Fatalf("worker Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("worker not ready after 10s")
	}
}
