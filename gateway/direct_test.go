package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/pkg/runner/periodic"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestMain lets the test binary run as a worker process of its own, which
// a test can kill with SIGKILL (see hangingWorker).
func TestMain(m *testing.M) {
	if url := os.Getenv("UDPGATE_TEST_HANGING_WORKER"); url != "" {
		hangingWorker(url, os.Getenv("UDPGATE_TEST_SUBJECT"), os.Getenv("UDPGATE_TEST_GROUP"))
		return
	}
	os.Exit(m.Run())
}

// hangingWorker is a direct worker process that takes requests and never
// answers: it prints "ready" once subscribed and "taken" for each request.
func hangingWorker(url, subject, group string) {
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := nc.QueueSubscribe(subject, group, func(*nats.Msg) { fmt.Println("taken") }); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	nc.Flush()
	fmt.Println("ready")
	select {}
}

// TestPlainSubscriptionIsAWorker: a worker that is nothing but a NATS
// queue subscription answering with msg.Respond serves a raw port and a
// CoAP resource; no udpgate code, no header to copy.
func TestPlainSubscriptionIsAWorker(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	coapAddr := coapListener(t, g)
	raw := testGateway(t, s, g, "127.0.0.1:0")[0]

	nc := natstest.Connect(t, s)
	if _, err := nc.QueueSubscribe(schemas.InSubject("udpgate", uint16(raw.Port)), "upper", func(m *nats.Msg) {
		m.Respond([]byte(strings.ToUpper(string(m.Data))))
	}); err != nil {
		t.Fatal(err)
	}
	coapHeaders := make(chan int, 1)
	if _, err := nc.QueueSubscribe(schemas.InSubject("udpgate", uint16(coapAddr.Port))+".GET.sensors.*", "sensors", func(m *nats.Msg) {
		coapHeaders <- len(m.Header)
		m.Respond([]byte("21.5"))
	}); err != nil {
		t.Fatal(err)
	}
	nc.Flush()

	got, err := exchangeUDP(t, raw.String(), []byte("hello"), 5*time.Second)
	if err != nil || string(got) != "HELLO" {
		t.Errorf("raw: %q, %v; want HELLO", got, err)
	}
	co := dialCoAP(t, coapAddr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := co.Get(ctx, "/sensors/1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := resp.ReadBody()
	if resp.Code() != codes.Content || string(body) != "21.5" {
		t.Errorf("coap: %v %q, want 2.05 21.5", resp.Code(), body)
	}
	// The raw request's 8 headers (TestRequestMessage), the request line
	// and the datagram head: schemas/README.md says so.
	if n := <-coapHeaders; n != 10 {
		t.Errorf("a CoAP GET without options carried %d headers, want 10", n)
	}
	// Egress counts a reply once it has written it: the client may read
	// it first.
	waitFor(t, "both replies counted sent", func() bool { return g.Stats().Egress.Sent == 2 })
	if st := g.Stats(); st.Egress.Sent != 2 || st.Egress.Unknown != 0 {
		t.Errorf("egress %+v, want 2 sent", st.Egress)
	}
}

// TestDirectAndDurableGroupsBothSeeEveryRequest: on one subject, a direct
// group and a durable group each see every request, and the client gets
// one reply to each; the other group's answer is dropped as a duplicate.
func TestDirectAndDurableGroupsBothSeeEveryRequest(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addr := testGateway(t, s, g, "127.0.0.1:0")[0]
	subject := schemas.InSubject("udpgate", uint16(addr.Port))
	var (
		mu   sync.Mutex // guards seen
		seen = map[string]map[string]bool{"direct": {}, "durable": {}}
	)
	for _, d := range []workers.Delivery{workers.Direct, workers.Durable} {
		startWorker(t, s, d, d.String(), subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			mu.Lock()
			seen[d.String()][string(r.Body)] = true
			mu.Unlock()
			_, err := w.Write(r.Body)
			return err
		})
	}
	const n = 20
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		c.Write([]byte("r" + itoa(i)))
	}
	replies := map[string]int{}
	buf := make([]byte, 64)
	for range n {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d replies of %d: %v", len(replies), n, err)
		}
		replies[string(buf[:k])]++
	}
	waitFor(t, "both groups saw every request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["direct"]) == n && len(seen["durable"]) == n
	})
	waitFor(t, "the second answers counted duplicate", func() bool { return g.Stats().Egress.Duplicate == n })
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if k, err := c.Read(buf); !isTimeout(err) {
		t.Errorf("a second reply arrived: %q, %v", buf[:k], err)
	}
	if len(replies) != n {
		t.Errorf("%d distinct replies to %d requests: %v", len(replies), n, replies)
	}
}

// TestUnservedAnsweredAtOnce: when no group serves a subject, the client
// gets the protocol's answer for it at once (CoAP 4.04, RPC
// STATUS_UNIMPLEMENTED), long before the deadline, and the gateway counts
// that NATS found no responder and that nobody serves the request.
func TestUnservedAnsweredAtOnce(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 5 * time.Second}
	coapAddr := coapListener(t, g)
	rpcConn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: rpcConn, Protocol: schemas.ProtocolRPC})
	testGateway(t, s, g)

	co := dialCoAP(t, coapAddr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent := time.Now()
	resp, err := co.Get(ctx, "/nobody")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code() != codes.NotFound {
		t.Errorf("coap: %v, want 4.04", resp.Code())
	}
	if took := time.Since(sent); took > g.Deadline/5 {
		t.Errorf("coap: 4.04 after %v, more than a fifth of the %v deadline", took, g.Deadline)
	}
	sent = time.Now()
	r := call(t, rpcConn.LocalAddr().(*net.UDPAddr), envelope(t, 7, "Nobody", "Home", nil), g.Deadline)
	if r == nil || r.Id != 7 || r.Status.String() != "STATUS_UNIMPLEMENTED" {
		t.Errorf("rpc: %v, want id 7 STATUS_UNIMPLEMENTED", r)
	}
	if took := time.Since(sent); took > g.Deadline/5 {
		t.Errorf("rpc: answered after %v, more than a fifth of the %v deadline", took, g.Deadline)
	}
	// The gateway counts an answer once it is sent.
	waitFor(t, "two requests counted unserved", func() bool { return g.Stats().Egress.Unserved == 2 })
	st := g.Stats()
	if e := st.Egress; e.NoResponders != 2 || e.Unserved != 2 || e.NoAnswer != 0 || e.NoWorker != 0 {
		t.Errorf("egress %+v, want 2 without responders, 2 unserved", e)
	}
	for name, c := range st.CoAP {
		if c.NotFound != 1 || c.Timeouts != 0 {
			t.Errorf("%s: %+v, want one 4.04 and no 5.04", name, c)
		}
	}
	for name, c := range st.RPC {
		if c.Unimplemented != 1 || c.Deadline != 0 {
			t.Errorf("%s: %+v, want one STATUS_UNIMPLEMENTED", name, c)
		}
	}
	if st.Pending != 0 {
		t.Errorf("%d exchanges open, want none", st.Pending)
	}
}

// TestDirectWorkerKilledMidRequest: a direct worker process killed with
// SIGKILL while it holds a CoAP request costs the client one
// retransmission, which the gateway publishes to the group again, where
// another instance answers it: no 5.04.
func TestDirectWorkerKilledMidRequest(t *testing.T) {
	s := natstest.RunServer(t)
	// The piggyback window outlasts the client's ACK timeout, so the
	// client retransmits before it is acknowledged.
	g := &Gateway{CoAP: coapConfig(3 * time.Second)}
	addr := coapListener(t, g)
	testGateway(t, s, g)
	subject := schemas.InSubject("udpgate", uint16(addr.Port)) + ".GET.sensors.*"

	// The only instance at first: a process of its own that takes the
	// request and hangs.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UDPGATE_TEST_HANGING_WORKER="+s.ClientURL(), "UDPGATE_TEST_SUBJECT="+subject, "UDPGATE_TEST_GROUP=sensors")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case l := <-lines:
			if l != want {
				t.Fatalf("worker process printed %q, want %q", l, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("worker process did not print %q", want)
		}
	}
	expect("ready")

	// The client retransmits after 1 to 1.5 s without an ACK (checked
	// every 50 ms: go-coap's default timer is coarse).
	stop := make(chan struct{})
	defer close(stop)
	co, err := coapudp.Dial(addr.String(), options.WithTransmission(1, time.Second, 4),
		options.WithPeriodicRunner(periodic.New(stop, 50*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	type result struct {
		code codes.Code
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := co.Get(ctx, "/sensors/1")
		if err != nil {
			done <- result{err: err}
			return
		}
		body, _ := resp.ReadBody()
		done <- result{code: resp.Code(), body: string(body)}
	}()
	expect("taken")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	// Another instance of the group, started after the first died.
	startWorker(t, s, workers.Direct, "sensors", subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		_, err := w.Write([]byte("21.5"))
		return err
	})

	res := <-done
	if res.err != nil || res.code != codes.Content || res.body != "21.5" {
		t.Fatalf("response %v %q, %v; want 2.05 21.5; stats %+v", res.code, res.body, res.err, g.Stats())
	}
	st := g.Stats()
	name := strconv.Itoa(addr.Port) + "/coap"
	if cs, in := st.CoAP[name], st.Ingress[name]; cs.Retransmitted != 1 || in.Republished != 1 || cs.Timeouts != 0 {
		t.Errorf("retransmissions published again %d (ingress %d), 5.04 sent %d; want 1, 1, 0", cs.Retransmitted, in.Republished, cs.Timeouts)
	}
}

// TestSlowConsumerDropsCounted: a direct instance whose backlog is full
// does not block NATS: what does not fit is dropped and counted.
func TestSlowConsumerDropsCounted(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: time.Second}
	addr := testGateway(t, s, g, "127.0.0.1:0")[0]
	release := make(chan struct{})
	started := make(chan struct{}, 16)
	w := &workers.Server{
		NATS:        natstest.Connect(t, s),
		Group:       "slow",
		Subjects:    []string{schemas.InSubject("udpgate", uint16(addr.Port))},
		Concurrency: 1,
		Backlog:     2,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			started <- struct{}{}
			<-release
			return nil
		}),
	}
	serveWorker(t, w)
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("first"))
	<-started // the only handler is busy
	for range 10 {
		c.Write([]byte("more"))
	}
	// 2 wait in the backlog, 8 are dropped.
	waitFor(t, "drops counted", func() bool { return w.Stats().Dropped == 8 })
	close(release)
}

// TestRawUnservedReleasedAtOnce: a raw request that no direct group takes
// and no durable group's consumer covers is released at once, counted
// no_worker, long before its deadline; one a durable group covers stays
// open for it, even when that group does not answer.
func TestRawUnservedReleasedAtOnce(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: time.Minute, ServedInterval: 50 * time.Millisecond}
	addrs := testGateway(t, s, g, "127.0.0.1:0", "127.0.0.1:0")
	nobody, durable := addrs[0], addrs[1]
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable: "silent", FilterSubject: schemas.InSubject("udpgate", uint16(durable.Port)), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, nobody)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := time.Now()
	c.Write([]byte("anyone?"))
	waitFor(t, "the unserved request released", func() bool { return g.Stats().Egress.NoWorker == 1 })
	if took := time.Since(sent); took > g.Deadline/10 {
		t.Errorf("released after %v, more than a tenth of the %v deadline", took, g.Deadline)
	}

	d, err := net.DialUDP("udp", nil, durable)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sentDurable := time.Now()
	d.Write([]byte("for the durable group"))
	waitFor(t, "NATS's no responders", func() bool { return g.Stats().Egress.NoResponders == 2 })
	// The gateway reads the durable groups when asked about such a
	// request, unless its latest reading is recent enough
	// (ServedInterval); the decision follows.
	waitFor(t, "the decision", func() bool {
		st := g.Stats()
		return !st.DurablesReadAt.IsZero() && st.Undecided == 0
	})
	time.Sleep(4 * g.ServedInterval) // a wrong decision would show by now
	if took := time.Since(sentDurable); took > g.Deadline/2 {
		t.Fatalf("checked after %v: the deadline is too close", took)
	}
	if st := g.Stats(); st.Egress.NoWorker != 1 || st.Pending != 1 {
		t.Errorf("no_worker %d, pending %d; want 1 and 1 (the durable group's request open)", st.Egress.NoWorker, st.Pending)
	}
}
