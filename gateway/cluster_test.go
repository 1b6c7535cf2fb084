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
// request is answered; then the node that leads the capture stream (and,
// unless it leads the group's consumer, that the gateway is connected to),
// with one worker instance on it, is stopped without handing anything
// over, and every request is still answered.
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
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a loaded cluster answers slowly
		st, err := js.Stream(ctx, name)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("stream %s has %d replicas, want 3", name, r)
		}
	}

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
	// The node to stop is not the group's consumer leader: a pull request
	// held by a consumer leader that crashes (or steps down) is replaced
	// only when the client misses its idle heartbeats, 30 s with nats.go's
	// defaults, longer than this test may take. It is the gateway's server
	// (n1) unless n1 leads the consumer, and it is made the capture
	// stream's leader: losing it takes a new election, the hardest case for
	// the gateway's publishes.
	victim := n1
	if c.ConsumerLeader(t, schemas.StreamIn, group) == n1 {
		victim = n3
	}
	var others []*server.Server
	for _, srv := range c.Servers {
		if srv != victim {
			others = append(others, srv)
		}
	}
	c.MoveStreamLeader(t, admin, schemas.StreamIn, victim.Name())
	var (
		mu     sync.Mutex // guards served
		served = map[int]int{}
	)
	for i, order := range [][]*server.Server{{victim, others[0], others[1]}, {others[0], others[1], victim}} {
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

	const n = 20
	// A UDP client resends what gets no answer; so does this one, a
	// bounded number of times. A datagram sent while a stream leader is
	// not yet current (the cluster settling after the leadership move
	// above, or the election after the node is stopped) may be dropped as
	// a publish failure, as a client on a real network would see a loss.
	const attempts = 5
	retries := 0
	ask := func(want string) {
		t.Helper()
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
			t.Fatalf("request %q: reply %q, %v (%d attempts)", want, got, err, attempts)
		}
	}
	// Before: every request answered.
	for i := range n {
		ask(fmt.Sprintf("before %d", i))
	}
	before := retries

	stopped := time.Now()
	c.Stop(victim)
	leader := c.StreamLeader(t, schemas.StreamIn)
	waitFor(t, "the gateway connected", func() bool {
		return g.NATS.IsConnected() && g.NATS.ConnectedServerName() != victim.Name()
	})
	t.Logf("%s stopped; %s leads %s after %s", victim.Name(), leader.Name(), schemas.StreamIn, time.Since(stopped).Round(time.Millisecond))

	// After: every request answered.
	for i := range n {
		ask(fmt.Sprintf("after %d", i))
	}
	mu.Lock()
	t.Logf("resends: %d before, %d after the loss of %s, for %d requests each; instances served %v; gateway %+v",
		before, retries-before, victim.Name(), n, served, g.Stats().Ingress)
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
