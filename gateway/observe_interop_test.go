package gateway

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// sensorInstance is one instance of an observable resource written with
// the worker SDK: a workers.Server of the group "sensors" whose Mux makes
// GET /sensors/{id} observable, and a workers.Notifier, both on a NATS
// connection of the instance's own.
type sensorInstance struct {
	name     string
	answered atomic.Int64 // registrations (GET with Observe 0) answered
	notifier *workers.Notifier
}

// sensorInstances runs n instances of the sensors group for the coap
// listener on port, each answering a GET of /sensors/{id} with
// "registered" and accepting it as a registration when it asks to be.
func sensorInstances(t *testing.T, s *server.Server, port uint16, n int) []*sensorInstance {
	t.Helper()
	var list []*sensorInstance
	for i := range n {
		inst := &sensorInstance{name: string(rune('A' + i))}
		nc := natstest.Connect(t, s)
		m := workers.NewMux()
		m.Observable("GET /sensors/{id}", workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			if r.CoAP.Observe == 0 {
				inst.answered.Add(1)
			}
			workers.NewCoAPResponse(w).SetContentFormat(0)
			_, err := w.Write([]byte("registered\n"))
			return err
		}))
		serveWorker(t, &workers.Server{NATS: nc, Group: "sensors", Subjects: m.Subjects(schemas.DefaultPrefix, port), Handler: m, Silent: true})
		inst.notifier = &workers.Notifier{NATS: nc, Port: port}
		list = append(list, inst)
	}
	return list
}

// notifyInTurn has the instances notify /sensors/1 in turn, A, B, A, ...,
// count times, each a NATS request answered once the gateway has sent the
// notification; every one must reach exactly one observer. It returns
// the bodies sent, in order.
func notifyInTurn(t *testing.T, instances []*sensorInstance, count int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sent []string
	for i := range count {
		inst := instances[i%len(instances)]
		body := inst.name + "-" + strconv.Itoa(i+1) + "\n"
		n, err := inst.notifier.NotifyCount(ctx, "/sensors/1", workers.Representation{ContentFormat: 0, Body: []byte(body)})
		if err != nil {
			t.Fatalf("instance %s: %v", inst.name, err)
		}
		if n != 1 {
			t.Fatalf("instance %s notified %d observers, want 1", inst.name, n)
		}
		sent = append(sent, body)
	}
	return sent
}

// registrar returns the instance that answered the one registration.
func registrar(t *testing.T, instances []*sensorInstance) *sensorInstance {
	t.Helper()
	var who *sensorInstance
	for _, inst := range instances {
		switch n := inst.answered.Load(); {
		case n == 1 && who == nil:
			who = inst
		case n != 0:
			t.Fatalf("instance %s answered %d registrations", inst.name, n)
		}
	}
	if who == nil {
		t.Fatal("no instance answered the registration")
	}
	return who
}

// observeInteropGateway runs a gateway node with one coap listener on
// 127.0.0.1 and two instances of the sensors group.
func observeInteropGateway(t *testing.T) (addr string, g *Gateway, instances []*sensorInstance) {
	t.Helper()
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	g = observeNode(t, s, c, "observe-interop", coap.Config{})
	return c.LocalAddr().String(), g, sensorInstances(t, s, port, 2)
}

// notificationLine is a notification's body in the clients' output.
var notificationLine = regexp.MustCompile(`(?m)^[AB]-[0-9]+$`)

// TestObserveLibcoapTwoInstances: libcoap's coap-client observes
// /sensors/1 for a few seconds (-s); one instance of the group answers the
// registration, then the two instances, each on its own NATS connection,
// notify in turn. coap-client shows the registration's response and every
// notification, in order, and deregisters when its time is up.
func TestObserveLibcoapTwoInstances(t *testing.T) {
	bin := coapClient(t)
	addr, g, instances := observeInteropGateway(t)
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// -s 4: observe for 4 s after the registration's response; -B 30:
	// wait that long for a response.
	cmd := exec.CommandContext(ctx, bin, "-s", "4", "-B", "30", "-o", out, "-m", "get", "coap://"+addr+"/sensors/1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// Once killed, Wait returns within WaitDelay whatever holds its pipes.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{}) // closed once cmd.Wait has returned waitErr
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		cancel()
		<-exited
	}()
	waitFor(t, "coap-client registered", func() bool { return observeStats(g).Observers == 1 })
	who := registrar(t, instances)
	sent := notifyInTurn(t, instances, 5)
	<-exited
	if waitErr != nil {
		t.Fatalf("coap-client: %v\n%s", waitErr, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("coap-client wrote nothing: %v\n%s", err, stderr.String())
	}
	var want []string
	for _, s := range sent {
		want = append(want, s[:len(s)-1])
	}
	if got := notificationLine.FindAllString(string(b), -1); !bytes.HasPrefix(b, []byte("registered\n")) || !slices.Equal(got, want) {
		t.Fatalf("coap-client received %q, want the registration's response, then %q (instance %s registered)\nstderr:\n%s",
			b, want, who.name, stderr.String())
	}
	waitFor(t, "coap-client deregistered", func() bool { return observeStats(g).Observers == 0 })
	if st := observeStats(g); st.Registrations != 1 || st.NON+st.CON != uint64(len(sent)) {
		t.Fatalf("stats %+v, want 1 registration and %d notifications", st, len(sent))
	}
}

// TestObserveGoCoAPTwoInstances: go-coap's client observes /sensors/1;
// one instance of the group answers the registration, then the two
// instances, each on its own NATS connection, notify in turn, and the
// client receives every notification, in order, then cancels.
func TestObserveGoCoAPTwoInstances(t *testing.T) {
	addr, g, instances := observeInteropGateway(t)
	co := dialCoAP(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan string, 64)
	obs, err := co.Observe(ctx, "/sensors/1", func(m *pool.Message) {
		body, _ := m.ReadBody()
		select {
		case got <- string(body):
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if first := <-got; first != "registered\n" {
		t.Fatalf("registration response %q", first)
	}
	who := registrar(t, instances)
	sent := notifyInTurn(t, instances, 5)
	for i, want := range sent {
		select {
		case v := <-got:
			if v != want {
				t.Fatalf("notification %d: %q, want %q (instance %s registered)", i, v, want, who.name)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("notification %d (%q) not received", i, want)
		}
	}
	if err := obs.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if st := observeStats(g); st.Observers != 0 || st.Observe1 != 1 || st.NON+st.CON != uint64(len(sent)) {
		t.Fatalf("stats %+v", st)
	}
}

// TestObserveNodeCoAPTwoInstances: node-coap (npm coap), in
// workers/examples/node/observe-client.mjs, observes /sensors/1; one
// instance of the group answers the registration, then the two
// instances, each on its own NATS connection, notify in turn. The client
// prints the registration's response and every notification, in order,
// then deregisters.
func TestObserveNodeCoAPTwoInstances(t *testing.T) {
	dir, node := nodeWorkerDeps(t)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "coap", "package.json")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node-coap missing in CI: %v (.ci/run runs npm ci in %s)", err, dir)
		}
		t.Skipf("node-coap missing: run npm ci in %s", dir)
	}
	addr, g, instances := observeInteropGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const count = 5
	cmd := exec.CommandContext(ctx, node, "observe-client.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "URL=coap://"+addr+"/sensors/1", "COUNT="+strconv.Itoa(count))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{}) // closed once cmd.Wait has returned waitErr
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	defer func() {
		cancel()
		<-exited
	}()
	registered := func() bool { return observeStats(g).Observers == 1 }
	for deadline := time.Now().Add(30 * time.Second); !registered(); time.Sleep(5 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatalf("observe-client.mjs exited: %v\n%s%s", waitErr, stdout.String(), stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("observe-client.mjs did not register in 30s")
		}
	}
	who := registrar(t, instances)
	sent := notifyInTurn(t, instances, count)
	<-exited
	if waitErr != nil {
		t.Fatalf("observe-client.mjs: %v\n%s", waitErr, stderr.String())
	}
	want := "2.05 registered\n"
	for _, s := range sent {
		want += "2.05 " + s
	}
	if got := stdout.String(); got != want {
		t.Fatalf("observe-client.mjs printed %q, want %q (instance %s registered)\nstderr:\n%s", got, want, who.name, stderr.String())
	}
	waitFor(t, "observe-client.mjs deregistered", func() bool { return observeStats(g).Observers == 0 })
	if st := observeStats(g); st.Observe1 != 1 || st.NON+st.CON != count {
		t.Fatalf("stats %+v", st)
	}
}
