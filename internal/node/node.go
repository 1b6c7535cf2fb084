// Package node assembles a udpgate node: an embedded NATS server with
// JetStream, a gateway on its listeners with its metrics and health
// endpoint, and built-in worker groups, all in one process. `udpgate run`,
// the bench suite and the tests start one; `udpgate gateway` and the worker
// commands use its parts (Connect, StartGateway, NewWorker).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// Builtin is a listener `udpgate run` opens by default, answered by a
// built-in worker. `udpgate worker NAME` serves the same port's subjects
// unless UDPGATE_WORKER_SUBJECTS says otherwise.
type Builtin struct {
	// Name names the listener and its worker group in UDPGATE_BUILTINS:
	// the worker's name, or for a second listener of the same worker a
	// name of its own (config.BuiltinPlacesWS).
	Name     string
	Worker   string // the built-in handler: builtin.Lookup(Worker)
	Port     uint16
	Protocol string
}

// Listener returns b's listener on all addresses (a ws listener on the
// path /).
func (b Builtin) Listener() config.Listener {
	l := config.Listener{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), b.Port), Protocol: b.Protocol}
	if b.Protocol == schemas.ProtocolWS {
		l.Path = "/"
	}
	return l
}

// Builtins are `udpgate run`'s default listeners and their workers.
var Builtins = []Builtin{
	{"echo", "echo", 9000, schemas.ProtocolRaw},
	{"time", "time", 9001, schemas.ProtocolRaw},
	{"coap", "coap", 5683, schemas.ProtocolCoAP},
	{"places", "places", 7000, schemas.ProtocolRPC},
	// The places worker again, for WebSocket clients (browsers).
	{config.BuiltinPlacesWS, "places", 8080, schemas.ProtocolWS},
}

// BuiltinSubjects returns the subjects the built-in listener name
// (Builtin.Name) is served on at its default port, or nil if there is
// none.
func BuiltinSubjects(name, prefix string) []string {
	for _, b := range Builtins {
		if b.Name == name {
			return builtin.Subjects(b.Worker, prefix, b.Port)
		}
	}
	return nil
}

// Worker is a built-in worker group of a Node.
type Worker struct {
	Name     string // the built-in handler: builtin.Lookup(Name)
	Group    string // Name if empty
	Listener int    // the index in Options.Listeners of the listener it serves
	// Durable serves in durable delivery whatever UDPGATE_DELIVERY says.
	Durable bool
}

// Options say what a Node serves.
type Options struct {
	Listeners []config.Listener
	Workers   []Worker
	// NATSOptions are added to the in-process connection's.
	NATSOptions []nats.Option
}

// Node is an embedded NATS server, a gateway and its built-in worker
// groups, running until the context given to Start ends or Stop is
// called. The gateway drains first, then the groups stop.
type Node struct {
	*Running
	NATS    *server.Server
	Conn    *nats.Conn
	Workers []*workers.Server
	// Ports are the bound addresses of Options.Listeners, in order (port
	// 0 in a listener becomes the port the system chose).
	Ports []netip.AddrPort
}

// Start starts a node with cfg (its embedded NATS server on
// cfg.NATSListen with its store in cfg.DataDir, its HTTP endpoint on
// cfg.HTTPListen) and returns once every part is ready. Close releases
// what Start took, after Wait or on an error of the caller.
func Start(ctx context.Context, cfg config.Config, log *slog.Logger, opts Options) (_ *Node, err error) {
	n := &Node{}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.NATS, err = StartNATS(cfg); err != nil {
		return nil, err
	}
	copts := append([]nats.Option{nats.InProcessServer(n.NATS), nats.Name("udpgate " + cfg.Node)}, opts.NATSOptions...)
	if n.Conn, err = nats.Connect(n.NATS.ClientURL(), copts...); err != nil {
		return nil, fmt.Errorf("connect to the embedded NATS server: %w", err)
	}
	var subs gateway.SubscriptionLister
	if cfg.DiscoverySubscriptions {
		subs = gateway.EmbeddedSubscriptions(n.NATS)
	}
	if n.Running, err = StartGateway(ctx, cfg, log, n.Conn, opts.Listeners, subs, nil); n.Running == nil {
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	udp, tcp := n.Gateway.Listeners, n.Gateway.WebSockets
	for _, l := range opts.Listeners {
		if l.Protocol == schemas.ProtocolWS {
			n.Ports = append(n.Ports, tcp[0].Listener.Addr().(*net.TCPAddr).AddrPort())
			tcp = tcp[1:]
			continue
		}
		n.Ports = append(n.Ports, udp[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort())
		udp = udp[1:]
	}
	for _, w := range opts.Workers {
		h, ok := builtin.Lookup(w.Name)
		if !ok || w.Listener < 0 || w.Listener >= len(n.Ports) {
			return nil, fmt.Errorf("node: no built-in worker %q, or no listener %d", w.Name, w.Listener)
		}
		wcfg := cfg
		if w.Durable {
			wcfg.Delivery = workers.Durable
		}
		subjects := builtin.Subjects(w.Name, cfg.Prefix, n.Ports[w.Listener].Port())
		group := w.Group
		if group == "" {
			group = w.Name
		}
		n.Workers = append(n.Workers, NewWorker(wcfg, log, n.JetStream, group, subjects, h, cfg.WorkerConcurrency))
	}
	if err := observe.RegisterWorkers(n.Observe.Registry, n.Workers...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	// The groups stop after the gateway, which answers its pending
	// exchanges first when it stops (UDPGATE_DRAIN_TIMEOUT).
	wctx, wcancel := context.WithCancel(context.WithoutCancel(n.ctx))
	n.Go(func() error {
		<-n.Served()
		wcancel()
		return nil
	})
	for _, w := range n.Workers {
		n.Observe.AddCheck("worker "+w.Group, observe.WorkerBound(w, 0))
		n.Go(func() error { return w.Serve(wctx) })
	}
	// The built-in coap worker's GET /time is observable: its notifier
	// publishes the time every second while the groups run.
	for _, w := range opts.Workers {
		if w.Name == "coap" {
			port := n.Ports[w.Listener].Port()
			n.Go(func() error { return builtin.NotifyTime(wctx, n.Conn, cfg.Prefix, port, time.Second, nil) })
		}
	}
	// A group sees only the requests that arrive after it subscribed (or
	// its consumer exists).
	for _, w := range n.Workers {
		if err := WaitReady(n.ctx, w.Ready()); err != nil {
			return nil, fmt.Errorf("worker %s: %w", w.Group, err)
		}
	}
	// The gateway answers /.well-known/core from what the groups
	// announce: have it ask them now, not at its next interval.
	if err := n.Gateway.Discover(n.ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// WaitReady waits for ready, or for ctx to end (a part failed).
func WaitReady(ctx context.Context, ready <-chan struct{}) error {
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stopped before it was ready: %w", context.Cause(ctx))
	case <-time.After(30 * time.Second):
		return errors.New("not ready after 30s")
	}
}

// StreamState returns the state of the stream named name.
func (n *Node) StreamState(ctx context.Context, name string) (jetstream.StreamState, error) {
	st, err := n.JetStream.Stream(ctx, name)
	if err != nil {
		return jetstream.StreamState{}, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return jetstream.StreamState{}, err
	}
	return info.State, nil
}

// Close stops what is still running and waits for it, then closes the
// connection and shuts the NATS server down.
func (n *Node) Close() {
	if n.Running != nil {
		n.Stop()
		n.Wait()
	}
	if n.Conn != nil {
		n.Conn.Close()
	}
	if n.NATS != nil {
		n.NATS.Shutdown()
		n.NATS.WaitForShutdown()
	}
}
