package gateway

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// listen binds a raw listener's socket on addr.
func listen(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := ingress.Listen(context.Background(), "udp4", addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func portOf(c *net.UDPConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) }

// same answers with the request's body, as bench's raw requests want.
func same(m *nats.Msg) []byte { return m.Data }

func livePorts(g *Gateway) []uint16 {
	var ports []uint16
	for _, l := range g.Live() {
		ports = append(ports, portOf(l.Conn))
	}
	return ports
}

// TestAddListenerUnderLoad: a listener added while an open-loop load runs
// on another answers at once, and the load loses nothing.
func TestAddListenerUnderLoad(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 5 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	contractWorker(t, s, "loaded", schemas.InSubject("udpgate", uint16(addrs[0].Port)), same)

	const count = 600
	result := make(chan bench.Result, 1)
	go func() {
		res, err := bench.Run(context.Background(), bench.Config{
			Target: "udp://" + addrs[0].String(), Payload: []byte("load"),
			Rate: 300, Count: count, Sockets: 4, Timeout: 5 * time.Second,
		})
		if err != nil {
			t.Errorf("load: %v", err)
		}
		result <- res
	}()
	loaded := itoa(addrs[0].Port) + "/raw"
	waitFor(t, "the load under way", func() bool { return g.Stats().Ingress[loaded].Received >= count/10 })

	c := listen(t, "127.0.0.1:0")
	added := c.LocalAddr().String()
	contractWorker(t, s, "added", schemas.InSubject("udpgate", portOf(c)), echo)
	name, err := g.AddListener(Listener{Conn: c})
	if err != nil {
		t.Fatal(err)
	}
	if want := itoa(int(portOf(c))) + "/raw"; name != want {
		t.Errorf("AddListener named it %q, want %q", name, want)
	}
	during := g.Stats().Ingress[loaded].Received
	if got, err := exchangeUDP(t, added, []byte("new"), 5*time.Second); err != nil || string(got) != "echo:new" {
		t.Errorf("the added listener answered %q, %v", got, err)
	}

	// Its port is served: another socket on it is refused, and closed.
	other := listen(t, net.JoinHostPort("127.0.0.2", itoa(int(portOf(c)))))
	if _, err := g.AddListener(Listener{Conn: other}); !errors.Is(err, ErrPortServed) {
		t.Errorf("a second listener on the port: %v, want ErrPortServed", err)
	}
	if _, err := other.WriteToUDP([]byte("x"), addrs[0]); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the refused socket: %v, want it closed", err)
	}

	res := <-result
	if during >= uint64(res.Sent) {
		t.Errorf("the listener was added after the load (%d of %d requests read), not during it", during, res.Sent)
	}
	if res.Sent == 0 || res.Lost != 0 || res.Errors != 0 || res.Answered != res.Sent {
		t.Errorf("load on the untouched listener: sent %d, answered %d, lost %d, errors %d (%s); want none lost",
			res.Sent, res.Answered, res.Lost, res.Errors, res.FirstError)
	}
	st := g.Stats()
	if st.ListenersAdded != 1 || st.ListenersRemoved != 0 || len(st.Ingress) != 2 {
		t.Errorf("added %d, removed %d, listeners %v; want 1, 0 and two", st.ListenersAdded, st.ListenersRemoved, st.Ingress)
	}
	if got := livePorts(g); !slices.Equal(got, []uint16{uint16(addrs[0].Port), portOf(c)}) {
		t.Errorf("Live ports %v", got)
	}
}

// TestRemoveListenerAnswersPending: a listener removed while requests
// wait for a slow worker answers every one of them, then closes its
// socket; the other listener is untouched, and the port can be served
// again.
func TestRemoveListenerAnswersPending(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 5 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0", "127.0.0.1:0")
	removed, kept := addrs[0], addrs[1]
	const handling = 300 * time.Millisecond
	wc := natstest.Connect(t, s)
	if _, err := wc.QueueSubscribe(schemas.InSubject("udpgate", uint16(removed.Port)), "slow", func(m *nats.Msg) {
		go func() {
			time.Sleep(handling)
			m.Respond(append([]byte("late:"), m.Data...))
		}()
	}); err != nil {
		t.Fatal(err)
	}
	if err := wc.Flush(); err != nil {
		t.Fatal(err)
	}
	contractWorker(t, s, "kept", schemas.InSubject("udpgate", uint16(kept.Port)), echo)

	const n = 20
	replies := make(chan string, n)
	var clients sync.WaitGroup
	for i := range n {
		clients.Go(func() {
			got, err := exchangeUDP(t, removed.String(), []byte("r"+itoa(i)), 10*time.Second)
			if err != nil {
				replies <- "error: " + err.Error()
				return
			}
			replies <- string(got)
		})
	}
	name := itoa(removed.Port) + "/raw"
	waitFor(t, "every request pending", func() bool { return g.Stats().Ingress[name].Pending == n })
	closed, err := g.RemoveListener(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.RemoveListener(name); !errors.Is(err, ErrNoSuchListener) {
		t.Errorf("removed twice: %v, want ErrNoSuchListener", err)
	}

	clients.Wait()
	close(replies)
	got := map[string]bool{}
	for r := range replies {
		got[r] = true
	}
	for i := range n {
		if !got["late:r"+itoa(i)] {
			t.Errorf("request r%d unanswered after the removal; replies %v", i, got)
		}
	}
	select {
	case <-closed:
	case <-time.After(g.Deadline + 5*time.Second):
		t.Fatal("the removed listener's channel still open after its deadline")
	}

	st := g.Stats()
	if _, ok := st.Ingress[name]; ok || st.ListenersRemoved != 1 || st.ListenersAdded != 0 {
		t.Errorf("after the removal: listeners %v, removed %d, added %d", st.Ingress, st.ListenersRemoved, st.ListenersAdded)
	}
	if got := livePorts(g); !slices.Equal(got, []uint16{uint16(kept.Port)}) {
		t.Errorf("Live ports %v, want the kept one", got)
	}
	if got, err := exchangeUDP(t, kept.String(), []byte("still"), 5*time.Second); err != nil || string(got) != "echo:still" {
		t.Errorf("the kept listener answered %q, %v", got, err)
	}
	// The port is free: served again, by a new socket.
	again, err := g.AddListener(Listener{Conn: listen(t, removed.String())})
	if err != nil || again != name {
		t.Fatalf("the port served again: %q, %v", again, err)
	}
	if got, err := exchangeUDP(t, removed.String(), []byte("again"), 5*time.Second); err != nil || string(got) != "late:again" {
		t.Errorf("the port served again answered %q, %v", got, err)
	}
}

// TestRemoveAddedListener: a listener added while serving is removed as
// one Serve started with, and its port is free once the channel closes.
func TestRemoveAddedListener(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	c := listen(t, "127.0.0.1:0")
	addr := c.LocalAddr().String()
	name, err := g.AddListener(Listener{Conn: c, Protocol: schemas.ProtocolCoAP})
	if err != nil {
		t.Fatal(err)
	}
	closed, err := g.RemoveListener(name)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("an idle listener not removed after 30s")
	}
	free := listen(t, addr)
	free.Close()
	if got := livePorts(g); !slices.Equal(got, []uint16{uint16(addrs[0].Port)}) {
		t.Errorf("Live ports %v", got)
	}
	if st := g.Stats(); st.ListenersAdded != 1 || st.ListenersRemoved != 1 {
		t.Errorf("added %d, removed %d; want 1 and 1", st.ListenersAdded, st.ListenersRemoved)
	}
}

// TestListenersNotServing: a gateway that does not serve takes no
// listener (and closes its socket) and removes none.
func TestListenersNotServing(t *testing.T) {
	g := &Gateway{}
	c := listen(t, "127.0.0.1:0")
	if _, err := g.AddListener(Listener{Conn: c}); !errors.Is(err, ErrNotServing) {
		t.Errorf("AddListener before Serve: %v, want ErrNotServing", err)
	}
	if _, err := c.WriteToUDP([]byte("x"), c.LocalAddr().(*net.UDPAddr)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the socket: %v, want it closed", err)
	}
	if _, err := g.RemoveListener("9000/raw"); !errors.Is(err, ErrNotServing) {
		t.Errorf("RemoveListener before Serve: %v, want ErrNotServing", err)
	}

	s := natstest.RunServer(t)
	testGateway(t, s, g, "127.0.0.1:0")
	if _, err := g.RemoveListener("9/raw"); !errors.Is(err, ErrNoSuchListener) {
		t.Errorf("RemoveListener of an unknown listener: %v, want ErrNoSuchListener", err)
	}
}

// TestRemovedPortFree: once RemoveListener's channel is closed, the port
// can be bound again, every time (the socket is closed by then, not
// closing).
func TestRemovedPortFree(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	testGateway(t, s, g, "127.0.0.1:0")
	c := listen(t, "127.0.0.1:0")
	addr := c.LocalAddr().String()
	for i := range 50 {
		name, err := g.AddListener(Listener{Conn: c})
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		closed, err := g.RemoveListener(name)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: not removed after 30s", i)
		}
		if c, err = ingress.Listen(context.Background(), "udp4", addr, 0); err != nil {
			t.Fatalf("round %d: the removed listener's port is not free: %v", i, err)
		}
	}
	c.Close()
}
