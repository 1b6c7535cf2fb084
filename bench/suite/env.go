package suite

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
)

// suiteEnv is the suite's gateway: a node (internal/node) with its
// embedded NATS server's store in a temporary directory, a gateway on seven
// loopback listeners (six UDP, one WebSocket) and the built-in workers,
// all in this process.
type suiteEnv struct {
	*node.Node
	dir    string
	stream string

	echo    netip.AddrPort // raw, echo worker (the configured delivery, direct by default)
	ingest  netip.AddrPort // raw, reply=off, no worker
	coap    netip.AddrPort // coap, coap worker
	rpc     netip.AddrPort // rpc, places worker
	durable netip.AddrPort // raw, echo worker in durable delivery
	ws      netip.AddrPort // ws (TCP, path /), places worker
	observe netip.AddrPort // coap, no built-in worker: gateway-observe's own
}

// start starts the suite's gateway the first time a case needs it.
func (s *suite) start(ctx context.Context) (*suiteEnv, error) {
	if s.env != nil {
		return s.env, nil
	}
	cfg := s.cfg
	if !s.guardOn {
		// The suite measures capacity: no per-source rate limit (its
		// loads come from 127.0.0.1), no amplification limit.
		cfg.Guard = guard.Config{}
	}
	e, err := startSuiteEnv(ctx, cfg, s.log)
	if err != nil {
		return nil, err
	}
	s.env = e
	return e, nil
}

func (s *suite) close() {
	if s.env != nil {
		s.env.close()
		s.env = nil
	}
}

func startSuiteEnv(ctx context.Context, cfg config.Config, log *slog.Logger) (*suiteEnv, error) {
	dir, err := os.MkdirTemp("", "udpgate-bench-")
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dir
	cfg.NATSListen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.HTTPListen = ""
	cfg.Node = "bench"
	cfg.StreamReplicas = 1
	cfg.StreamMemory = false
	cfg.DrainTimeout = -1 // between cases nothing waits for replies: stop at once
	if cfg.RcvBuf == 0 {
		// As deployed: the compose file and the Kubernetes ConfigMap
		// ask for 4 MiB (docs/operations.md).
		cfg.RcvBuf = suiteRcvBuf
	}
	// A direct worker's slow-consumer drops are counted by its Server
	// (the cases' notes report them), not printed by nats.go one by one.
	quiet := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if !errors.Is(err, nats.ErrSlowConsumer) {
			log.Warn("bench suite: nats", "err", err)
		}
	})
	loop := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)
	n, err := node.Start(context.WithoutCancel(ctx), cfg, log, node.Options{
		Listeners: []config.Listener{
			{Addr: loop, Protocol: schemas.ProtocolRaw},
			{Addr: loop, Protocol: schemas.ProtocolRaw, NoReply: true}, // ingest: captured, never answered
			{Addr: loop, Protocol: schemas.ProtocolCoAP},
			{Addr: loop, Protocol: schemas.ProtocolRPC},
			{Addr: loop, Protocol: schemas.ProtocolRaw}, // durable: the echo worker as a JetStream pull consumer
			{Addr: loop, Protocol: schemas.ProtocolWS},
			{Addr: loop, Protocol: schemas.ProtocolCoAP}, // gateway-observe: its observers and its worker
		},
		Workers: []node.Worker{
			{Name: "echo", Listener: 0},
			{Name: "coap", Listener: 2},
			{Name: "places", Listener: 3},
			// What UDPGATE_DELIVERY=durable udpgate worker echo runs,
			// whatever the delivery of the others.
			{Name: "echo", Group: "echo-durable", Listener: 4, Durable: true},
			// The same places worker as the rpc listener's, a group of
			// its own on the ws listener's subjects.
			{Name: "places", Group: "places-ws", Listener: 5},
		},
		NATSOptions: []nats.Option{nats.Name("udpgate bench suite"), quiet},
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := n.Ports
	return &suiteEnv{Node: n, dir: dir, stream: cfg.Stream, echo: p[0], ingest: p[1], coap: p[2], rpc: p[3], durable: p[4], ws: p[5], observe: p[6]}, nil
}

// workerDropped returns the requests the workers' direct subscriptions
// have dropped so far (NATS slow consumers), all groups together.
func (e *suiteEnv) workerDropped() uint64 {
	var n uint64
	for _, w := range e.Workers {
		n += w.Stats().Dropped
	}
	return n
}

// rawPort returns the raw listener answered by the echo worker: in
// durable delivery, or in the configured one.
func (e *suiteEnv) rawPort(durable bool) netip.AddrPort {
	if durable {
		return e.durable
	}
	return e.echo
}

// streamState returns the capture stream's state.
func (e *suiteEnv) streamState(ctx context.Context) (jetstream.StreamState, error) {
	return e.StreamState(ctx, e.stream)
}

// settle waits until the capture stream stops growing (200 ms without a
// new message, 10 s at most) and returns its state.
func (e *suiteEnv) settle(ctx context.Context) (jetstream.StreamState, error) {
	last, err := e.streamState(ctx)
	if err != nil {
		return last, err
	}
	grew := time.Now()
	for deadline := grew.Add(10 * time.Second); time.Now().Before(deadline) && time.Since(grew) < 200*time.Millisecond; {
		if err := bench.Pause(ctx, 20*time.Millisecond); err != nil {
			return last, err
		}
		st, err := e.streamState(ctx)
		if err != nil {
			return last, err
		}
		if st.LastSeq != last.LastSeq {
			grew = time.Now()
		}
		last = st
	}
	return last, nil
}

// close stops the workers and the gateway, then the NATS server, and
// removes the store.
func (e *suiteEnv) close() {
	e.Close()
	os.RemoveAll(e.dir)
}
