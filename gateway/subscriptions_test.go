package gateway

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// natsServerProcess builds nats-server (the version go.mod names) and runs
// it as a process of its own, with JetStream, on a free port of 127.0.0.1,
// with conf as its configuration file if not empty, until the test ends;
// it returns the client URL.
func natsServerProcess(t *testing.T, conf string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "store")}
	if conf != "" {
		f := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-c", f)
	}
	cmd := exec.Command(bin, args...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil { // the server accepts clients once it listens
			c.Close()
			return url
		}
		select {
		case <-exited:
			t.Fatalf("nats-server exited:\n%s", log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server at %s: %v", url, err)
		}
	}
}

// TestClusterSubscriptions: against a NATS server in a process of its own,
// as `udpgate gateway` runs, the gateway learns from the server's CONNZ a
// plain queue subscription that announces nothing: listed by path in
// resource discovery, named in Status with its subject and instances.
func TestClusterSubscriptions(t *testing.T) {
	url := natsServerProcess(t, "")
	connect := func() *nats.Conn {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	g := &Gateway{NATS: connect(), Node: "n1", Deadline: 5 * time.Second, DiscoveryInterval: 200 * time.Millisecond}
	g.Subscriptions = ClusterSubscriptions(g.NATS)
	addr := coapListener(t, g)
	serveGateway(t, g)
	subject := schemas.CoAPSubject("udpgate", uint16(addr.Port), "POST", []string{"reverse"})
	for range 2 { // two instances of the group
		nc := connect()
		if _, err := nc.QueueSubscribe(subject, "reverse", func(m *nats.Msg) { m.Respond([]byte("esrever")) }); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.Discover(ctx); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(g.Groups(), func(gr Group) bool { return gr.Name == "reverse" })
	if i < 0 {
		t.Fatalf("groups %+v: no group reverse", g.Groups())
	}
	if gr := g.Groups()[i]; gr.Delivery != DeliveryDirect || gr.Announced || gr.Instances != 2 || !slices.Equal(gr.Subjects, []string{subject}) {
		t.Errorf("group reverse: %+v", gr)
	}
	co := dialCoAP(t, addr.String())
	resp, err := co.Get(ctx, WellKnownCore)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := resp.ReadBody(); string(body) != "</reverse>" {
		t.Errorf("GET %s: %v %q, want </reverse>", WellKnownCore, resp.Code(), body)
	}
}

// TestClusterSubscriptionsFailClearly: a user that may not ask the
// servers gets no answer; the listing says why.
func TestClusterSubscriptionsFailClearly(t *testing.T) {
	url := natsServerProcess(t, `authorization { users = [ {user: u, password: p, permissions: {publish: {deny: ["$SYS.>"]}}} ] }`)
	nc, err := nats.Connect(url, nats.UserInfo("u", "p"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = ClusterSubscriptions(nc)(ctx, "udpgate.in.>")
	if err == nil || !strings.Contains(err.Error(), "no permission") {
		t.Errorf("err = %v, want one that says a permission may be missing", err)
	}
}
