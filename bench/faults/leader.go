package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// leaderStop: a 3-node JetStream cluster in this process, the capture
// stream at 3 replicas, the gateway connected to a node that does not
// lead it, and two raw listeners under open loops (half the rate each):
// one answered by a direct echo group, one by a durable one (a pull
// consumer, whose leader is moved off the victim). At the middle of the
// load the server that leads the capture stream is shut down with
// nats-server's Shutdown, which steps its Raft leaders down first: a new
// leader comes within tens of milliseconds (leaderCrash kills one
// instead). The durable group must lose at most 0.1%; the direct group's
// loss is reported (a client that resends gets its answer; this one does
// not resend).
func (f *faults) leaderStop(ctx context.Context) error {
	c, err := startFaultCluster(3)
	if err != nil {
		return err
	}
	defer c.close()
	n1, n2, n3 := c.servers[0], c.servers[1], c.servers[2]
	connect := func(name string, order ...*server.Server) (*nats.Conn, error) {
		urls := make([]string, len(order))
		for i, s := range order {
			urls[i] = s.ClientURL()
		}
		return nats.Connect(strings.Join(urls, ","), nats.Name(name), nats.DontRandomize(),
			nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	}
	gnc, err := connect("udpgate bench faults gateway", n1, n2, n3)
	if err != nil {
		return err
	}
	defer gnc.Close()
	deadline := f.cfg.Deadline
	g := &gateway.Gateway{
		NATS: gnc, Node: "faults-leader", Prefix: f.cfg.Prefix,
		Stream:   ingress.StreamConfig{Replicas: 3},
		Deadline: deadline, DrainTimeout: -1, Log: f.log,
	}
	for range 2 {
		conn, err := ingress.Listen(ctx, "udp4", "127.0.0.1:0", 4<<20)
		if err != nil {
			node.CloseListeners(g)
			return err
		}
		g.Listeners = append(g.Listeners, gateway.Listener{Conn: conn, Protocol: schemas.ProtocolRaw})
	}
	direct := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	durable := g.Listeners[1].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	stopGateway, err := serveFaultGateway(ctx, g)
	if err != nil {
		return err
	}
	defer stopGateway()
	home := c.byName(gnc.ConnectedServerName())
	if home == nil {
		return errors.New("the gateway is not connected")
	}
	var others []*server.Server
	for _, s := range c.servers {
		if s != home {
			others = append(others, s)
		}
	}
	wnc, err := connect("udpgate bench faults workers", home, others[0], others[1])
	if err != nil {
		return err
	}
	defer wnc.Close()
	wjs, err := jetstream.New(wnc)
	if err != nil {
		return err
	}
	stream := schemas.StreamIn
	wcfg := f.cfg
	wcfg.Delivery = workers.Direct
	stopDirect, err := serveGroup(node.NewWorker(wcfg, f.log, wjs, "echo-direct", []string{schemas.InSubject(f.cfg.Prefix, direct.Port())}, slowEcho(0), 64))
	if err != nil {
		return err
	}
	defer stopDirect()
	// The durable group's consumer is created here, as the worker would
	// create it, so that its leader is known before the victim is chosen.
	wcfg.Delivery = workers.Durable
	wcfg.Stream = stream
	dw := node.NewWorker(wcfg, f.log, wjs, "echo-durable", []string{schemas.InSubject(f.cfg.Prefix, durable.Port())}, slowEcho(0), 64)
	if err := createConsumer(ctx, wjs, stream, dw); err != nil {
		return err
	}
	isConsumerLeader := func(s *server.Server) bool {
		return s.JetStreamIsConsumerLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream, dw.Group)
	}
	cl, err := c.leaderOf(isConsumerLeader)
	if err != nil {
		return err
	}
	// The victim leads the capture stream, and is neither the gateway's
	// server (losing it takes an election while the gateway stays
	// connected) nor the consumer's leader (a pull request held by a
	// consumer leader that dies is replaced only when the client misses
	// its heartbeats, 30 s).
	isStreamLeader := func(s *server.Server) bool { return s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) }
	leader, err := c.leaderOf(isStreamLeader)
	if err != nil {
		return err
	}
	if leader == home || leader == cl {
		for _, s := range c.servers {
			if s != home && s != cl {
				leader = s
				break
			}
		}
		if err := c.stepDown(wnc, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, leader, isStreamLeader); err != nil {
			return err
		}
	}
	stopDurable, err := serveGroup(dw)
	if err != nil {
		return err
	}
	defer stopDurable()
	name := func(p netip.AddrPort) string { return strconv.Itoa(int(p.Port())) + "/raw" }

	timeout := max(f.timeout, deadline+time.Second)
	ld, err := startLoad(ctx, direct, f.rate/2, f.duration, timeout)
	if err != nil {
		return err
	}
	lu, err := startLoad(ctx, durable, f.rate/2, f.duration, timeout)
	if err != nil {
		ld.wait()
		return err
	}
	bench.Pause(ctx, f.duration/2)
	killAt := time.Since(ld.start)
	before := g.Stats()
	leader.Shutdown()
	leader.WaitForShutdown()
	var elected time.Duration
	if _, err := c.leaderOf(func(s *server.Server) bool {
		return s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
	}); err == nil {
		elected = time.Since(ld.start) - killAt
	}
	ld.wait()
	lu.wait()
	after := g.Stats()
	for _, m := range []struct {
		mode string
		l    *faultLoad
		port netip.AddrPort
	}{{"direct", ld, direct}, {"durable", lu, durable}} {
		r := m.l.count("leader-stop-"+m.mode, allRequests)
		b, a := before.Ingress[name(m.port)], after.Ingress[name(m.port)]
		maps.Copy(r.Extra, map[string]float64{
			"capture_retried": float64(a.CaptureRetried), "capture_failed": float64(a.CaptureFailed),
			"capture_retried_after_kill": float64(a.CaptureRetried - b.CaptureRetried),
			"publish_failed":             float64(a.PublishFailed + a.NATSDown),
			"election_ms":                float64(elected.Milliseconds()), "lost_pct": 100 * float64(r.Lost+r.Late) / float64(max(r.Sent, 1)),
		})
		r.Note = fmt.Sprintf("%s (stream leader) shut down at %s, a new leader after %s; the gateway (on %s) retried %d capture copies, %d not captured by the deadline",
			leader.Name(), killAt.Round(time.Millisecond), elected.Round(time.Millisecond), home.Name(), a.CaptureRetried, a.CaptureFailed)
		if m.mode == "direct" {
			r.Note += "; no target: a raw client that resends gets an answer, this one does not resend"
		}
		f.rows = append(f.rows, r)
		if m.mode == "durable" {
			f.goal("leader-stop-durable lost %", r.Extra["lost_pct"], "<=", 0.1, r.Sent > 0)
		}
	}
	return nil
}

// faultCluster is a NATS cluster with JetStream on loopback, in this
// process (internal/natstest.RunCluster, without a test).
type faultCluster struct {
	dir     string
	servers []*server.Server // n1, n2, ...
}

// startFaultCluster starts n clustered servers with JetStream on
// 127.0.0.1, each with its own store, and waits until every one follows
// a meta leader that knows them all.
func startFaultCluster(n int) (_ *faultCluster, err error) {
	dir, err := os.MkdirTemp("", "udpgate-faults-cluster-")
	if err != nil {
		return nil, err
	}
	c := &faultCluster{dir: dir}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	// Every server lists every route: reserve the cluster ports first.
	routes := make([]*url.URL, n)
	for i := range routes {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		routes[i] = &url.URL{Scheme: "nats-route", Host: l.Addr().String()}
		l.Close()
	}
	for i := range n {
		port, _ := strconv.Atoi(routes[i].Port())
		s, err := server.NewServer(&server.Options{
			ServerName: "n" + strconv.Itoa(i+1), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: filepath.Join(dir, strconv.Itoa(i+1)),
			Cluster: server.ClusterOpts{Name: "faults", Host: "127.0.0.1", Port: port},
			Routes:  routes, NoLog: true, NoSigs: true,
		})
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		go s.Start()
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		if !s.ReadyForConnections(10 * time.Second) {
			return nil, fmt.Errorf("cluster: %s not ready after 10s", s.Name())
		}
	}
	return c, c.waitFor("every server current and healthy behind a meta leader that knows them all", func() bool {
		var l *server.Server
		for _, s := range c.servers {
			if s.JetStreamIsLeader() {
				l = s
			}
		}
		if l == nil || len(l.JetStreamClusterPeers()) != n {
			return false
		}
		for _, s := range c.servers {
			if !s.JetStreamIsCurrent() || s.Healthz(nil).Status != "ok" {
				return false
			}
		}
		return true
	}, 30*time.Second)
}

func (c *faultCluster) close() {
	for _, s := range c.servers {
		s.Shutdown()
		s.WaitForShutdown()
	}
	os.RemoveAll(c.dir)
}

func (c *faultCluster) byName(name string) *server.Server {
	for _, s := range c.servers {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// leaderOf waits until a running server is what is says, and returns it.
func (c *faultCluster) leaderOf(is func(*server.Server) bool) (*server.Server, error) {
	var l *server.Server
	err := c.waitFor("a leader", func() bool {
		for _, s := range c.servers {
			if s.Running() && is(s) {
				l = s
				return true
			}
		}
		return false
	}, 30*time.Second)
	return l, err
}

// stepDown asks the leader behind subject to hand over to preferred, and
// waits until preferred leads.
func (c *faultCluster) stepDown(nc *nats.Conn, subject string, preferred *server.Server, leads func(*server.Server) bool) error {
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred.Name()}})
	for try := 0; ; try++ {
		msg, err := nc.Request(subject, req, 10*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %w", subject, err)
		}
		var resp struct {
			Success bool `json:"success"`
		}
		if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Success {
			return fmt.Errorf("%s: %s", subject, msg.Data)
		}
		// A new election may pick another server: ask again.
		err = c.waitFor(preferred.Name()+" leading", func() bool { return leads(preferred) }, 5*time.Second)
		if err == nil || try == 3 {
			return err
		}
	}
}

// waitFor polls cond until it holds, limit at most.
func (c *faultCluster) waitFor(what string, cond func() bool, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
