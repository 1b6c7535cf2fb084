package faults

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// faultEnv is a scenario's embedded NATS server and connection.
type faultEnv struct {
	dir string
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

// startFaultEnv starts an embedded NATS server with JetStream on file
// storage in a temporary directory, as `udpgate run` does.
func (f *faults) startFaultEnv() (*faultEnv, error) {
	dir, err := os.MkdirTemp("", "udpgate-faults-")
	if err != nil {
		return nil, err
	}
	e := &faultEnv{dir: dir}
	cfg := f.cfg
	cfg.DataDir = dir
	cfg.NATSListen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.Node = "faults"
	if e.ns, err = node.StartNATS(cfg); err != nil {
		e.close()
		return nil, err
	}
	if e.nc, err = nats.Connect(e.ns.ClientURL(), nats.InProcessServer(e.ns), nats.Name("udpgate bench faults")); err != nil {
		e.close()
		return nil, err
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *faultEnv) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	os.RemoveAll(e.dir)
}

// faultCfg is the configuration of a scenario's gateway: f's, on the
// embedded server, stream replicas 1.
func (f *faults) faultCfg(name string) config.Config {
	cfg := f.cfg
	cfg.Node = name
	cfg.StreamReplicas = 1
	cfg.StreamMemory = false
	return cfg
}

// slowEcho is a handler that answers with the request after d.
func slowEcho(d time.Duration) workers.Handler {
	return workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := w.Write(r.Body)
		return err
	})
}

// serveGroup serves w until stop is called (which waits for it) and
// waits until it is ready.
func serveGroup(w *workers.Server) (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	stop = func() {
		cancel()
		<-done
	}
	select {
	case <-w.Ready():
		return stop, nil
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("worker %s: %v", w.Group, err)
	case <-time.After(30 * time.Second):
		stop()
		return nil, fmt.Errorf("worker %s: not ready after 30s", w.Group)
	}
}

// faultListener is a raw listener on 127.0.0.1 on any free port.
var faultListener = config.Listener{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: schemas.ProtocolRaw}

// faultConcurrency is the handlers running at once in a scenario's echo
// instance: enough for 2,000 requests/s of 100 ms each.
const faultConcurrency = 512

// serveFaultGateway serves g until the returned stop is called (which
// waits for Serve to return), and returns once g is ready.
func serveFaultGateway(ctx context.Context, g *gateway.Gateway) (stop func(), err error) {
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- g.Serve(gctx) }()
	stop = func() {
		cancel()
		<-served
	}
	if err := node.WaitReady(gctx, g.Ready()); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// createConsumer creates the consumer of the durable group member w in
// stream as its Server would on Serve, so that a scenario can find or move
// the consumer's leader before the worker starts. A replicated consumer
// elects its leader first: this waits up to 30 s.
func createConsumer(ctx context.Context, js jetstream.JetStream, stream string, w *workers.Server) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: w.Group, FilterSubjects: w.Subjects, AckPolicy: jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverNewPolicy, AckWait: cmp.Or(w.AckWait, workers.DefaultAckWait),
		MaxDeliver: workers.DefaultMaxDeliver, MaxAckPending: workers.DefaultMaxAckPending,
	})
	return err
}
