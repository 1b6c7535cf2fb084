package natstest

import (
	"encoding/json"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Account is the account of clients of a server without authentication,
// where the streams of the tests live.
const Account = "$G"

// Cluster is a NATS cluster with JetStream on loopback: the distributed
// engine of a production deployment, in one test process.
type Cluster struct {
	Servers []*server.Server // named n1, n2, ... in order
}

// RunCluster starts n clustered NATS servers with JetStream on 127.0.0.1,
// each with a random client port and its own store in t.TempDir(), and
// waits until JetStream has a meta leader that knows every peer online. They are shut down by
// t.Cleanup.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	// Every server lists every route, its own included (a server ignores
	// a route to itself), so the cluster ports must be known before the
	// first server starts: reserve free ones, and free them just before.
	ls := make([]net.Listener, n)
	routes := make([]*url.URL, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: reserve a cluster port: %v", err)
		}
		ls[i] = l
		routes[i] = &url.URL{Scheme: "nats-route", Host: l.Addr().String()}
	}
	for _, l := range ls {
		l.Close()
	}
	c := &Cluster{}
	for i := range n {
		port, _ := strconv.Atoi(routes[i].Port())
		opts := &server.Options{
			ServerName: "n" + strconv.Itoa(i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: port},
			Routes:     routes,
			NoLog:      true,
			NoSigs:     true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("natstest: new server %s: %v", opts.ServerName, err)
		}
		go s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		c.Servers = append(c.Servers, s)
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("natstest: server %s not ready after 10s", s.Name())
		}
	}
	c.waitFor(t, "a JetStream meta leader", func() bool { return c.leader((*server.Server).JetStreamIsLeader) != nil })
	// Streams with replicas n are placed only on peers the meta leader
	// knows to be online with JetStream; wait until it knows them all.
	c.waitFor(t, "every JetStream peer online", func() bool {
		l := c.leader((*server.Server).JetStreamIsLeader)
		return l != nil && len(l.JetStreamClusterPeers()) == len(c.Servers)
	})
	// And until every server follows that leader and is healthy, so that
	// the first JetStream API requests are not lost to an early
	// re-election.
	c.waitFor(t, "every server current and healthy", func() bool {
		for _, s := range c.Servers {
			if !s.JetStreamIsCurrent() || s.Healthz(nil).Status != "ok" {
				return false
			}
		}
		return true
	})
	return c
}

// URLs returns the client URLs of servers, comma-separated, for
// nats.Connect: a client given them all reconnects to another when its
// server goes away.
func URLs(servers ...*server.Server) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Server returns the server called name, or nil.
func (c *Cluster) Server(name string) *server.Server {
	for _, s := range c.Servers {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// Stop shuts s down: its clients and routes are cut at once, and it does
// not hand its leaderships over first, as lame duck mode would.
func (c *Cluster) Stop(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// StreamLeader waits until a running server leads stream, and returns it.
func (c *Cluster) StreamLeader(t testing.TB, stream string) *server.Server {
	t.Helper()
	is := func(s *server.Server) bool { return s.JetStreamIsStreamLeader(Account, stream) }
	c.waitFor(t, "a leader of stream "+stream, func() bool { return c.leader(is) != nil })
	return c.leader(is)
}

// ConsumerLeader waits until a running server leads the consumer, and
// returns it.
func (c *Cluster) ConsumerLeader(t testing.TB, stream, consumer string) *server.Server {
	t.Helper()
	is := func(s *server.Server) bool { return s.JetStreamIsConsumerLeader(Account, stream, consumer) }
	c.waitFor(t, "a leader of consumer "+consumer, func() bool { return c.leader(is) != nil })
	return c.leader(is)
}

// MoveStreamLeader makes the server called to the leader of stream, through
// nc, and waits until it is.
func (c *Cluster) MoveStreamLeader(t testing.TB, nc *nats.Conn, stream, to string) {
	t.Helper()
	if c.StreamLeader(t, stream).Name() == to {
		return
	}
	stepDown(t, nc, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, to)
	c.waitFor(t, to+" leading stream "+stream, func() bool {
		return c.Server(to).JetStreamIsStreamLeader(Account, stream)
	})
}

// MoveConsumerLeader makes the server called to the leader of the
// consumer, through nc, and waits until it is.
func (c *Cluster) MoveConsumerLeader(t testing.TB, nc *nats.Conn, stream, consumer, to string) {
	t.Helper()
	if c.ConsumerLeader(t, stream, consumer).Name() == to {
		return
	}
	stepDown(t, nc, "$JS.API.CONSUMER.LEADER.STEPDOWN."+stream+"."+consumer, to)
	c.waitFor(t, to+" leading consumer "+consumer, func() bool {
		return c.Server(to).JetStreamIsConsumerLeader(Account, stream, consumer)
	})
}

// stepDown asks the leader behind subject to hand over to the server
// called preferred.
func stepDown(t testing.TB, nc *nats.Conn, subject, preferred string) {
	t.Helper()
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred}})
	msg, err := nc.Request(subject, req, 10*time.Second)
	if err != nil {
		t.Fatalf("natstest: %s: %v", subject, err)
	}
	var resp struct {
		Success bool `json:"success"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Success {
		t.Fatalf("natstest: %s: %s (%v)", subject, msg.Data, err)
	}
}

// leader returns the running server for which is holds, or nil.
func (c *Cluster) leader(is func(*server.Server) bool) *server.Server {
	for _, s := range c.Servers {
		if s.Running() && is(s) {
			return s
		}
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after 30 s: a lost
// leader is replaced after a randomized election timeout of 4 to 9 s.
func (c *Cluster) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("natstest: timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
