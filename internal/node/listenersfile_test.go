package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// fileNode is a node serving one fixed raw listener on 127.0.0.1,
// answered by the built-in echo worker, and a listener file.
type fileNode struct {
	*Node
	cfg   config.Config
	fixed []config.Listener
	path  string // the listener file
	conn  *nats.Conn
}

// startFileNode starts a fileNode whose listener file holds file; vars
// are more UDPGATE_ variables (without the prefix), as for nodeConfig.
func startFileNode(t *testing.T, file string, vars map[string]string) *fileNode {
	t.Helper()
	path := filepath.Join(t.TempDir(), "listeners.yaml")
	writeFile(t, path, file)
	if vars == nil {
		vars = map[string]string{}
	}
	vars["LISTENERS_FILE"] = path
	vars["DEADLINE"] = "5s"
	cfg := nodeConfig(t, vars)
	fixed := []config.Listener{{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: schemas.ProtocolRaw}}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := Start(ctx, cfg, discard, Options{Listeners: fixed, Workers: []Worker{{Name: "echo"}}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		n.Close()
	})
	fixed[0].Addr = n.Ports[0]
	conn, err := nats.Connect(n.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return &fileNode{Node: n, cfg: cfg, fixed: fixed, path: path, conn: conn}
}

// watch returns the node's ListenersFile, loaded, serving on trigger
// (SIGHUP if nil) and polling every poll, until the test ends.
func (n *fileNode) watch(t *testing.T, trigger <-chan struct{}, poll time.Duration) *ListenersFile {
	t.Helper()
	f := &ListenersFile{Path: n.path, Gateway: n.Gateway, Config: n.cfg, Fixed: n.fixed, Log: discard, Trigger: trigger, Poll: poll}
	if err := f.Load(n.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(n.Context())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

// worker answers the requests of port with reply, after delay, through a
// plain queue subscription.
func (n *fileNode) worker(t *testing.T, port uint16, delay time.Duration, reply func([]byte) []byte) {
	t.Helper()
	sub, err := n.conn.QueueSubscribe(schemas.InSubject(n.cfg.Prefix, port), "file-"+strconv.Itoa(int(port)), func(m *nats.Msg) {
		if delay == 0 {
			m.Respond(reply(m.Data))
			return
		}
		go func() {
			time.Sleep(delay)
			m.Respond(reply(m.Data))
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
}

// metric returns the value of the counter or gauge name with labels
// (name, value pairs) in reg, -1 if there is none.
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
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
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// As editors and kubectl do: a new file renamed over the old one.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a UDP port free on 127.0.0.1 now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// ask sends payload to 127.0.0.1:port and returns the reply, or an error
// if none comes within wait.
func ask(port uint16, payload string, wait time.Duration) (string, error) {
	c, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write([]byte(payload)); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	got, err := c.Read(buf)
	return string(buf[:got]), err
}

// waitUntil polls cond until it holds, failing the test after 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fileOf(ports ...uint16) string {
	var b strings.Builder
	b.WriteString("listeners:\n")
	for _, p := range ports {
		fmt.Fprintf(&b, "  - port: %d\n    address: 127.0.0.1\n", p)
	}
	return b.String()
}

func served(n *fileNode, port uint16) bool {
	_, ok := n.Gateway.ListenerName(port)
	return ok
}

func echoBody(b []byte) []byte { return append([]byte("file:"), b...) }

// TestListenersFileAddUnderLoad: a port added through the file while an
// open-loop load runs on another listener answers, and the load loses
// nothing.
func TestListenersFileAddUnderLoad(t *testing.T) {
	n := startFileNode(t, "listeners: []\n", nil)
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	added := freePort(t)
	n.worker(t, added, 0, echoBody)

	const count = 600
	result := make(chan bench.Result, 1)
	go func() {
		res, err := bench.Run(context.Background(), bench.Config{
			Target: "udp://" + n.Ports[0].String(), Payload: []byte("load"),
			Rate: 300, Count: count, Sockets: 4, Timeout: 5 * time.Second,
		})
		if err != nil {
			t.Errorf("load: %v", err)
		}
		result <- res
	}()
	loaded := schemas.Listener(n.Ports[0].Port(), schemas.ProtocolRaw)
	waitUntil(t, "the load under way", func() bool { return n.Gateway.Stats().Ingress[loaded].Received >= count/10 })

	writeFile(t, n.path, fileOf(added))
	trigger <- struct{}{}
	waitUntil(t, "the file's listener served", func() bool { return served(n, added) })
	during := n.Gateway.Stats().Ingress[loaded].Received
	if got, err := ask(added, "new", 5*time.Second); err != nil || got != "file:new" {
		t.Errorf("the added port answered %q, %v", got, err)
	}

	res := <-result
	if during >= uint64(res.Sent) {
		t.Errorf("the port was added after the load (%d of %d requests read), not during it", during, res.Sent)
	}
	if res.Sent == 0 || res.Lost != 0 || res.Errors != 0 || res.Answered != res.Sent {
		t.Errorf("load on the untouched port: sent %d, answered %d, lost %d, errors %d (%s); want none lost",
			res.Sent, res.Answered, res.Lost, res.Errors, res.FirstError)
	}
	if st := f.Stats(); st.Applied != 1 || st.Unchanged != 1 || st.Refused != 0 || st.Listeners != 1 {
		t.Errorf("stats %+v: want the first reading unchanged (empty), the second applied", st)
	}
	if got := f.Listeners(); len(got) != 1 || got[0].String() != fmt.Sprintf("127.0.0.1:%d/raw", added) {
		t.Errorf("Listeners %v", got)
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 1 || st.ListenersRemoved != 0 {
		t.Errorf("gateway: added %d, removed %d; want 1 and 0", st.ListenersAdded, st.ListenersRemoved)
	}
	if status := n.Gateway.Status(n.Context()); !hasOrigin(status.Listeners, added, OriginFile) {
		t.Errorf("status %+v: the port's origin is not %q", status.Listeners, OriginFile)
	}
	// The same file again: nothing to change, nothing touched.
	trigger <- struct{}{}
	waitUntil(t, "the same file read again", func() bool { return f.Stats().Unchanged == 2 })
	if st := n.Gateway.Stats(); st.ListenersAdded != 1 || st.ListenersRemoved != 0 {
		t.Errorf("the same file read again: added %d, removed %d; want 1 and 0", st.ListenersAdded, st.ListenersRemoved)
	}
}

func hasOrigin(ls []gateway.ListenerStatus, port uint16, origin string) bool {
	for _, l := range ls {
		if l.Listener == schemas.Listener(port, schemas.ProtocolRaw) {
			return l.Origin == origin
		}
	}
	return false
}

// TestListenersFileRemoveAnswersPending: a port removed from the file
// while requests wait for its slow worker answers every one of them, then
// closes; the other listeners are untouched.
func TestListenersFileRemoveAnswersPending(t *testing.T) {
	removed, kept := freePort(t), freePort(t)
	n := startFileNode(t, fileOf(removed, kept), nil)
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	const handling = 300 * time.Millisecond
	n.worker(t, removed, handling, func(b []byte) []byte { return append([]byte("late:"), b...) })
	n.worker(t, kept, 0, echoBody)

	const pending = 20
	replies := make(chan string, pending)
	var clients sync.WaitGroup
	for i := range pending {
		clients.Go(func() {
			got, err := ask(removed, "r"+strconv.Itoa(i), 10*time.Second)
			if err != nil {
				got = "error: " + err.Error()
			}
			replies <- got
		})
	}
	name := schemas.Listener(removed, schemas.ProtocolRaw)
	waitUntil(t, "every request pending", func() bool { return n.Gateway.Stats().Ingress[name].Pending == pending })
	writeFile(t, n.path, fileOf(kept))
	trigger <- struct{}{}

	clients.Wait()
	close(replies)
	got := map[string]bool{}
	for r := range replies {
		got[r] = true
	}
	for i := range pending {
		if !got["late:r"+strconv.Itoa(i)] {
			t.Errorf("request r%d unanswered after the removal; replies %v", i, got)
		}
	}
	waitUntil(t, "the port closed", func() bool { return !served(n, removed) })
	// The listener leaves the gateway's list as it stops, and closes its
	// socket a moment later.
	waitUntil(t, "the removed port free", func() bool {
		c, err := ingress.Listen(context.Background(), "udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(removed))), 0)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	for _, p := range []uint16{n.Ports[0].Port(), kept} {
		if got, err := ask(p, "still", 5*time.Second); err != nil || !strings.HasSuffix(got, "still") {
			t.Errorf("port %d answered %q, %v", p, got, err)
		}
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 2 || st.ListenersRemoved != 1 {
		t.Errorf("gateway: added %d, removed %d; want 2 and 1", st.ListenersAdded, st.ListenersRemoved)
	}
	if st := f.Stats(); st.Applied != 2 || st.Listeners != 1 {
		t.Errorf("stats %+v", st)
	}
	reg := n.Observe.Registry
	if v := metric(t, reg, "udpgate_listeners_removed_total"); v != 1 {
		t.Errorf("udpgate_listeners_removed_total %v, want 1", v)
	}
	if v := metric(t, reg, "udpgate_request_duration_seconds", "port", strconv.Itoa(int(kept))); v == -1 {
		t.Errorf("no latency histogram for the file's port %d", kept)
	}
}

// TestListenersFileChanged: a listener whose options change is removed
// and added again with the new ones; the file's other listener is not
// touched.
func TestListenersFileChanged(t *testing.T) {
	changed, kept := freePort(t), freePort(t)
	n := startFileNode(t, fileOf(changed, kept), nil)
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	n.worker(t, changed, 0, echoBody)
	keptConn := n.Gateway.Live()[2].Conn
	writeFile(t, n.path, fileOf(kept)+fmt.Sprintf("  - {port: %d, address: 127.0.0.1, reply: off}\n", changed))
	trigger <- struct{}{}
	waitUntil(t, "the change applied", func() bool { return f.Stats().Applied == 2 })
	if !served(n, changed) {
		t.Fatalf("port %d not served after its change", changed)
	}
	if _, err := ask(changed, "ingest only", 300*time.Millisecond); err == nil {
		t.Errorf("a reply=off port answered")
	}
	live := n.Gateway.Live()
	if len(live) != 3 || live[1].Conn != keptConn {
		t.Errorf("the unchanged listener was touched: %v", live)
	}
	if !live[2].NoReply {
		t.Errorf("the changed listener %+v is not reply=off", live[2])
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 3 || st.ListenersRemoved != 1 {
		t.Errorf("gateway: added %d, removed %d; want 3 and 1", st.ListenersAdded, st.ListenersRemoved)
	}
}

// TestListenersFileRefused: a bad file, a missing one, and one with a
// port that cannot be bound change nothing; the error names every
// problem, and the listeners keep serving.
func TestListenersFileRefused(t *testing.T) {
	good, other := freePort(t), freePort(t)
	n := startFileNode(t, fileOf(good), nil)
	f := &ListenersFile{Path: n.path, Gateway: n.Gateway, Config: n.cfg, Fixed: n.fixed}
	if err := f.Load(n.Context()); err != nil {
		t.Fatal(err)
	}
	n.worker(t, good, 0, echoBody)
	before := n.Gateway.Live()
	unchanged := func(what string) {
		t.Helper()
		after := n.Gateway.Live()
		if len(after) != len(before) || after[1].Conn != before[1].Conn {
			t.Errorf("%s: listeners %v, were %v", what, after, before)
		}
		if got, err := ask(good, what, 5*time.Second); err != nil || got != "file:"+what {
			t.Errorf("%s: the file's port answered %q, %v", what, got, err)
		}
		if st := n.Gateway.Stats(); st.ListenersAdded != 1 || st.ListenersRemoved != 0 {
			t.Errorf("%s: added %d, removed %d; want 1 and 0", what, st.ListenersAdded, st.ListenersRemoved)
		}
	}

	fixed := n.Ports[0].Port()
	writeFile(t, n.path, fmt.Sprintf(`listeners:
  - port: %d
    protocol: quic
  - port: %d
    rate: fast
    colour: red
  - port: %d
`, good, other, fixed))
	err := f.Load(n.Context())
	for _, want := range []string{
		`listeners.yaml:3: listeners[0]: unknown protocol "quic"`,
		`listeners.yaml:5: listeners[1]: rate="fast" is not a rate`,
		`listeners.yaml:6: listeners[1]: unknown key "colour"`,
		fmt.Sprintf(`listeners.yaml:7: listeners[2]: port %d is served by 127.0.0.1:%d/raw already`, fixed, fixed),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v\nlacks %q", err, want)
		}
	}
	unchanged("bad file")

	// A port another socket holds: the whole change is refused, the new
	// port bound meanwhile is closed again, the removal not made.
	held, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(freePort(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := held.LocalAddr().(*net.UDPAddr).Port
	writeFile(t, n.path, fileOf(other, uint16(heldPort)))
	if err := f.Load(n.Context()); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("127.0.0.1:%d/raw", heldPort)) ||
		!strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %v, want the held port's bind failure", err)
	}
	unchanged("a port held")
	if c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(other)}); err != nil {
		t.Errorf("the refused change's new port %d is still bound: %v", other, err)
	} else {
		c.Close()
	}

	os.Remove(n.path)
	if err := f.Load(n.Context()); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	unchanged("missing file")

	st := f.Stats()
	if st.Refused != 3 || st.Applied != 1 || !st.LastRefused || st.Listeners != 1 {
		t.Errorf("stats %+v: want 3 refused, 1 applied", st)
	}
	// Fixed, the file applies again.
	writeFile(t, n.path, fileOf(good, other))
	if err := f.Load(n.Context()); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.LastRefused || st.Applied != 2 || st.Listeners != 2 {
		t.Errorf("stats %+v after the file was fixed", st)
	}
}

// TestStartListenersFile: as `udpgate gateway` starts it: the file's
// listeners serve at once, a change of content (a Kubernetes ConfigMap's
// symbolic links swapped) is applied without a signal, and the metrics
// count the readings. A missing file refuses to start.
func TestStartListenersFile(t *testing.T) {
	first, second := freePort(t), freePort(t)
	n := startFileNode(t, "", nil)
	// The ConfigMap's layout: listeners.yaml -> ..data/listeners.yaml,
	// ..data -> a directory per version.
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "listeners.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("v1", fileOf(first))
	path := filepath.Join(dir, "listeners.yaml")
	if err := os.Symlink(filepath.Join("..data", "listeners.yaml"), path); err != nil {
		t.Fatal(err)
	}
	cfg := n.cfg
	cfg.ListenersFile = path
	if _, err := StartListenersFile(n.Running, config.Config{ListenersFile: filepath.Join(dir, "missing.yaml")}, discard, n.fixed, nil); err == nil {
		t.Error("started with a missing file")
	}
	f, err := StartListenersFile(n.Running, cfg, discard, n.fixed, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := n.Observe.Registry
	if !served(n, first) {
		t.Fatalf("port %d not served after the start", first)
	}
	version("v2", fileOf(second))
	waitUntil(t, "the new content applied", func() bool { return served(n, second) && !served(n, first) })
	if got := f.Listeners(); len(got) != 1 || got[0].Addr.Port() != second {
		t.Errorf("Listeners %v", got)
	}
	for outcome, want := range map[string]float64{"applied": 2, "unchanged": 0, "refused": 0} {
		if v := metric(t, reg, "udpgate_listener_reloads_total", "outcome", outcome); v != want {
			t.Errorf("udpgate_listener_reloads_total{outcome=%q} %v, want %v", outcome, v, want)
		}
	}
	if v := metric(t, reg, "udpgate_listener_file_listeners"); v != 1 {
		t.Errorf("udpgate_listener_file_listeners %v, want 1", v)
	}
	version("v3", "listeners: [{port: 0}]\n")
	waitUntil(t, "the bad content refused", func() bool { return f.Stats().Refused == 1 })
	if v := metric(t, reg, "udpgate_listener_file_last_reload_successful"); v != 0 {
		t.Errorf("udpgate_listener_file_last_reload_successful %v after a refusal, want 0", v)
	}
	if !served(n, second) {
		t.Errorf("port %d no longer served after a refused reading", second)
	}
}

// TestListenersFileSIGHUP: SIGHUP has the file read again, whatever the
// poll says.
func TestListenersFileSIGHUP(t *testing.T) {
	// Until the ListenersFile listens, a SIGHUP must not end the test
	// process.
	own := make(chan os.Signal, 1)
	signal.Notify(own, syscall.SIGHUP)
	defer signal.Stop(own)
	port := freePort(t)
	n := startFileNode(t, "listeners: []\n", nil)
	f := n.watch(t, nil, time.Hour)
	writeFile(t, n.path, fileOf(port))
	deadline := time.Now().Add(20 * time.Second)
	for f.Stats().Applied == 0 {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not have the file read again")
		}
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		time.Sleep(50 * time.Millisecond)
	}
	if !served(n, port) {
		t.Errorf("port %d not served after SIGHUP", port)
	}
}

// TestListenersFileBackWhileRemoved: a port the file lists again while
// its removal still answers what was pending is served again once its
// socket has closed; the pending requests are answered all the same.
func TestListenersFileBackWhileRemoved(t *testing.T) {
	port := freePort(t)
	n := startFileNode(t, fileOf(port), nil)
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	n.worker(t, port, 300*time.Millisecond, func(b []byte) []byte { return append([]byte("late:"), b...) })
	const pending = 5
	replies := make(chan string, pending)
	for i := range pending {
		go func() {
			got, err := ask(port, "r"+strconv.Itoa(i), 10*time.Second)
			if err != nil {
				got = "error: " + err.Error()
			}
			replies <- got
		}()
	}
	name := schemas.Listener(port, schemas.ProtocolRaw)
	waitUntil(t, "every request pending", func() bool { return n.Gateway.Stats().Ingress[name].Pending == pending })
	writeFile(t, n.path, "listeners: []\n")
	trigger <- struct{}{}
	waitUntil(t, "the removal under way", func() bool { return f.Stats().Applied == 2 })
	writeFile(t, n.path, fileOf(port))
	trigger <- struct{}{}
	for range pending {
		if got := <-replies; !strings.HasPrefix(got, "late:r") {
			t.Errorf("a pending request got %q", got)
		}
	}
	waitUntil(t, "the port back", func() bool { return f.Stats().Applied == 3 })
	if got, err := ask(port, "back", 5*time.Second); err != nil || got != "late:back" {
		t.Errorf("the port back answered %q, %v", got, err)
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 2 || st.ListenersRemoved != 1 {
		t.Errorf("gateway: added %d, removed %d; want 2 and 1", st.ListenersAdded, st.ListenersRemoved)
	}
}

// TestListenersFilePush: a raw listener the file gives push: on takes
// workers' pushes to a client that sent to it; one without takes none.
// Push given or taken away by a new reading changes the listener, which
// is bound again with the new setting.
func TestListenersFilePush(t *testing.T) {
	a, b := freePort(t), freePort(t)
	file := func(pushed, plain uint16) string {
		return fmt.Sprintf("listeners:\n  - {port: %d, address: 127.0.0.1, reply: off, push: on}\n  - {port: %d, address: 127.0.0.1, reply: off}\n", pushed, plain)
	}
	n := startFileNode(t, file(a, b), nil)
	trigger := make(chan struct{})
	f := n.watch(t, trigger, time.Hour)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dest := c.LocalAddr().(*net.UDPAddr).AddrPort()
	// hello sends to port and waits until its listener has read it.
	hello := func(port uint16) {
		t.Helper()
		name := schemas.Listener(port, schemas.ProtocolRaw)
		before := n.Gateway.Stats().Ingress[name].Received
		if _, err := c.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, fmt.Sprintf("port %d read the datagram", port), func() bool { return n.Gateway.Stats().Ingress[name].Received > before })
	}
	push := func(port uint16, body string, wait time.Duration) error {
		ctx, cancel := context.WithTimeout(n.Context(), wait)
		defer cancel()
		return workers.SendDatagram(ctx, n.conn, n.cfg.Prefix, n.cfg.Node, port, dest, []byte(body))
	}
	pushed := func(port uint16, body string) {
		t.Helper()
		if err := push(port, body, 5*time.Second); err != nil {
			t.Fatalf("push from port %d: %v", port, err)
		}
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:m]) != body || from.Port() != port {
			t.Errorf("got %q from %v (%v), want %q from port %d", buf[:m], from, err, body, port)
		}
	}
	// refused waits until a push from port finds no push=on listener:
	// NATS learns of a removed listener's unsubscription asynchronously.
	refused := func(port uint16) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("no push=on listener on port %d", port), func() bool {
			return errors.Is(push(port, "refused", 200*time.Millisecond), workers.ErrNoPushListener)
		})
	}

	hello(a)
	hello(b)
	pushed(a, "pushed from a")
	refused(b)
	pushOf := func() map[uint16]bool {
		out := map[uint16]bool{}
		for _, l := range n.Gateway.Live() {
			out[uint16(l.Conn.LocalAddr().(*net.UDPAddr).Port)] = l.Push
		}
		return out
	}
	if got := pushOf(); !got[a] || got[b] {
		t.Errorf("push by port %v, want on for %d only", got, a)
	}

	writeFile(t, n.path, file(b, a))
	trigger <- struct{}{}
	waitUntil(t, "the change applied", func() bool { return f.Stats().Applied == 2 })
	if got := pushOf(); got[a] || !got[b] {
		t.Errorf("push by port %v after the change, want on for %d only", got, b)
	}
	if st := n.Gateway.Stats(); st.ListenersAdded != 4 || st.ListenersRemoved != 2 {
		t.Errorf("gateway: added %d, removed %d; want 4 and 2: both listeners changed", st.ListenersAdded, st.ListenersRemoved)
	}
	refused(a)
	// The listener bound again knows its peers from then on.
	hello(b)
	pushed(b, "pushed from b")
	if got := f.Listeners(); len(got) != 2 || got[0].Push == got[1].Push {
		t.Errorf("Listeners %+v", got)
	}
}
