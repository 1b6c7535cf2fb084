package gateway

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// startWorker runs one instance of a worker group on its own NATS
// connection, which it returns so a test can kill the instance.
func startWorker(t *testing.T, s *server.Server, delivery workers.Delivery, group, subject string, h workers.HandlerFunc) *nats.Conn {
	t.Helper()
	nc, js := natstest.JetStream(t, s)
	w := &workers.Server{
		JetStream: js,
		Delivery:  delivery,
		Group:     group,
		Subjects:  []string{subject},
		Handler:   h,
		AckWait:   300 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Serve(ctx) // an error is expected when a test kills the connection
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-w.Ready(): // requests sent from now on reach the group
	case <-done:
		t.Fatalf("worker %s stopped before it was ready", group)
	case <-time.After(10 * time.Second):
		t.Fatalf("worker %s not ready after 10s", group)
	}
	return nc
}

func TestGroupsSeeEverythingInstancesShare(t *testing.T) {
	for _, d := range []workers.Delivery{workers.Direct, workers.Durable} {
		t.Run(d.String(), func(t *testing.T) { groupsSeeEverythingInstancesShare(t, d) })
	}
}

// groupsSeeEverythingInstancesShare: a group of three instances shares the
// requests, and an observer group sees every one of them.
func groupsSeeEverythingInstancesShare(t *testing.T, d workers.Delivery) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	subject := schemas.InSubject("udpgate", uint16(addrs[0].Port))

	var (
		mu       sync.Mutex // guards byInst and observed
		byInst   = map[int]int{}
		observed = map[string]bool{}
	)
	for i := range 3 {
		startWorker(t, s, d, "answer", subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			mu.Lock()
			byInst[i]++
			mu.Unlock()
			_, err := w.Write(r.Body)
			return err
		})
	}
	startWorker(t, s, d, "observe", subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		mu.Lock()
		observed[string(r.Body)] = true
		mu.Unlock()
		return nil // observers write nothing, so they never answer
	})

	const clients, each = 6, 10
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				msg := fmt.Sprintf("c%d-%d", c, i)
				got, err := exchangeUDP(t, addrs[0].String(), []byte(msg), 5*time.Second)
				if err != nil || string(got) != msg {
					t.Errorf("%s: reply %q, %v", msg, got, err)
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "observer saw every request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(observed) == clients*each
	})
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for i := range 3 {
		if byInst[i] == 0 {
			t.Errorf("instance %d handled nothing: %v", i, byInst)
		}
		total += byInst[i]
	}
	if total != clients*each {
		t.Errorf("the group handled %d requests, want %d (%v)", total, clients*each, byInst)
	}
	t.Logf("requests per instance: %v", byInst)
}

// TestWorkerDiesBeforeAck: a durable group redelivers the request of an
// instance that died with it.
func TestWorkerDiesBeforeAck(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	subject := schemas.InSubject("udpgate", uint16(addrs[0].Port))

	t.Run("before replying", func(t *testing.T) {
		var (
			mu     sync.Mutex // guards first and deliveries
			first  = -1
			conns  []*nats.Conn
			taken  = make(chan int, 1)
			second = make(chan uint64, 1)
		)
		for i := range 2 {
			conns = append(conns, startWorker(t, s, workers.Durable, "dies", subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
				mu.Lock()
				if first == -1 {
					first = i
					mu.Unlock()
					taken <- i
					<-ctx.Done() // hang until the instance is killed
					return ctx.Err()
				}
				mu.Unlock()
				second <- r.Delivery
				_, err := fmt.Fprintf(w, "answered by %d", i)
				return err
			}))
		}
		c, err := net.DialUDP("udp", nil, addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("work"))
		dead := <-taken
		conns[dead].Close() // the instance dies holding the request, unacknowledged
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if want := fmt.Sprintf("answered by %d", 1-dead); err != nil || string(buf[:n]) != want {
			t.Fatalf("reply %q, %v; want %q", buf[:n], err, want)
		}
		if d := <-second; d != 2 {
			t.Errorf("the answering instance saw delivery %d, want 2", d)
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, err := c.Read(buf); !isTimeout(err) {
			t.Errorf("a second reply arrived: %q, %v", buf[:n], err)
		}
	})

	t.Run("after replying", func(t *testing.T) {
		// A worker that publishes its reply and dies before acking: the
		// redelivered request is answered again, and egress drops the
		// second reply.
		before := g.Stats().Egress
		nc, js := natstest.JetStream(t, s)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cons, err := js.CreateOrUpdateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
			Durable: "replies-then-dies", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: 300 * time.Millisecond, DeliverPolicy: jetstream.DeliverNewPolicy,
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.DialUDP("udp", nil, addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("once"))
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		m := <-batch.Messages()
		if m == nil {
			t.Fatal("no request")
		}
		nc.Publish(m.Headers().Get(schemas.HeaderReply), []byte("first"))
		nc.Close() // dies without acking

		startWorker(t, s, workers.Durable, "replies-then-dies", subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write([]byte("second"))
			return err
		})
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "first" {
			t.Fatalf("reply %q, %v; want first", buf[:n], err)
		}
		waitFor(t, "the redelivered answer dropped as a duplicate", func() bool {
			return g.Stats().Egress.Duplicate == before.Duplicate+1
		})
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(buf); !isTimeout(err) {
			t.Errorf("a second reply arrived: %q, %v", buf[:n], err)
		}
	})
}
