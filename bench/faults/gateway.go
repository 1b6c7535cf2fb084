package faults

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
)

// gatewayStop: a raw listener answered by a direct echo group whose
// handler takes 50 ms, under an open loop; at the middle of the load the
// gateway is stopped gracefully (its Serve ctx cancelled: it stops
// reading, then answers what it has read). Every request it read before
// it stopped must be answered.
func (f *faults) gatewayStop(ctx context.Context) error {
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-stop")
	g, err := node.NewGateway(ctx, cfg, f.log, e.nc, []config.Listener{faultListener}, nil)
	if err != nil {
		return err
	}
	port := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	name := strconv.Itoa(int(port.Port())) + "/raw"
	gctx, stopGateway := context.WithCancel(context.WithoutCancel(ctx))
	defer stopGateway()
	served := make(chan error, 1)
	go func() { served <- g.Serve(gctx) }()
	if err := node.WaitReady(gctx, g.Ready()); err != nil {
		return err
	}
	stopWorker, err := serveGroup(node.NewWorker(cfg, f.log, e.js, "echo-slow", []string{schemas.InSubject(cfg.Prefix, port.Port())}, slowEcho(50*time.Millisecond), faultConcurrency))
	if err != nil {
		stopGateway()
		<-served
		return err
	}
	defer stopWorker()

	l, err := startLoad(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port.Port()), f.rate, f.duration, f.timeout)
	if err != nil {
		return err
	}
	bench.Pause(ctx, f.duration/2)
	stopAt := time.Since(l.start)
	stopGateway()
	if err := <-served; err != nil {
		l.wait()
		return fmt.Errorf("gateway: %w", err)
	}
	drained := time.Since(l.start) - stopAt
	read := int(g.Stats().Ingress[name].Received)
	l.wait()

	// The gateway read the first requests, in the order they were sent
	// from one socket: ids below read.
	readRow := l.count("gateway-stop-read", func(id int, _ time.Duration) bool { return id < read })
	unread := l.count("gateway-stop-unread", func(id int, _ time.Duration) bool { return id >= read })
	before := l.count("", func(_ int, at time.Duration) bool { return at < stopAt })
	maps.Copy(readRow.Extra, map[string]float64{
		"read_before_stop": float64(read), "sent_before_stop": float64(before.Sent),
		"drain_ms": float64(drained.Milliseconds()),
	})
	readRow.Note = fmt.Sprintf("stopped at %s: the gateway had read %d requests (%d were sent by then), answered %d of them, and returned %s after the stop",
		stopAt.Round(time.Millisecond), read, before.Sent, readRow.Answered, drained.Round(time.Millisecond))
	unread.Note = "sent after the gateway stopped reading: not read, lost as expected, no target"
	f.rows = append(f.rows, readRow, unread)
	f.goal("gateway-stop lost among read", float64(readRow.Lost+readRow.Late), "<=", 0, read > 0)
	return nil
}

// gatewayHandover: a raw listener answered by a direct echo group whose
// handler takes 50 ms, under an open loop; at the middle of the load a
// new gateway takes the running one's socket over, as `udpgate gateway`
// does with UDPGATE_HANDOVER (the same functions: takeOver, startGateway,
// offerSockets), and the old one drains and stops. Every request must be
// answered, once.
func (f *faults) gatewayHandover(ctx context.Context) error {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		f.rows = append(f.rows, faultRow{Name: "gateway-handover", Note: "skipped: a hand-over needs a Unix system"})
		return nil
	}
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-handover")
	cfg.Handover = filepath.Join(e.dir, "handover.sock")
	port, err := freeUDPPortOn()
	if err != nil {
		return err
	}
	cfg.Listeners = []config.Listener{{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Protocol: schemas.ProtocolRaw}}
	stopWorker, err := serveGroup(node.NewWorker(cfg, f.log, e.js, "echo-slow", []string{schemas.InSubject(cfg.Prefix, port)}, slowEcho(50*time.Millisecond), faultConcurrency))
	if err != nil {
		return err
	}
	defer stopWorker()
	old, err := f.gatewayProcess(ctx, cfg, e.ns)
	if err != nil {
		return err
	}
	defer old.stop()

	l, err := startLoad(ctx, cfg.Listeners[0].Addr, f.rate, f.duration, f.timeout)
	if err != nil {
		return err
	}
	bench.Pause(ctx, f.duration/2)
	at := time.Since(l.start)
	replacement, err := f.gatewayProcess(ctx, cfg, e.ns)
	if err != nil {
		l.wait()
		return fmt.Errorf("the new gateway: %w", err)
	}
	defer replacement.stop()
	took := time.Since(l.start) - at
	select {
	case <-old.done:
		if old.err != nil {
			l.wait()
			return fmt.Errorf("the old gateway: %w", old.err)
		}
	case <-time.After(30 * time.Second):
		l.wait()
		return errors.New("the old gateway did not stop after the hand-over")
	}
	stopped := time.Since(l.start) - at
	name := strconv.Itoa(int(port)) + "/raw"
	oldRead := old.run.Gateway.Stats().Ingress[name].Received
	l.wait()
	newRead := replacement.run.Gateway.Stats().Ingress[name].Received

	r := l.count("gateway-handover", allRequests)
	maps.Copy(r.Extra, map[string]float64{
		"takeover_ms": float64(took.Milliseconds()), "old_stopped_ms": float64(stopped.Milliseconds()),
		"read_by_old": float64(oldRead), "read_by_new": float64(newRead),
	})
	r.Note = fmt.Sprintf("a new gateway took the socket over at %s (serving after %s; the old one read %d, the new one %d); the old one drained and stopped %s after that",
		at.Round(time.Millisecond), took.Round(time.Millisecond), oldRead, newRead, stopped.Round(time.Millisecond))
	f.rows = append(f.rows, r)
	f.goal("gateway-handover lost", float64(r.Lost+r.Late), "<=", 0, r.Sent > 0)
	f.goal("gateway-handover duplicate", float64(r.Duplicate), "<=", 0, r.Sent > 0)
	return nil
}

// freeUDPPortOn returns a UDP port free on 127.0.0.1 a moment ago.
func freeUDPPortOn() (uint16, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// gatewayProc is a gateway run as `udpgate gateway` runs it, on its own
// NATS connection.
type gatewayProc struct {
	run    *node.Running
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{} // closed when the run has ended, err set
	err    error
	once   sync.Once
}

// gatewayProcess starts a gateway as runGateway does with UDPGATE_HANDOVER:
// it takes the sockets of the gateway that offers them on cfg.Handover, if
// one does, serves, and offers its own in turn.
func (f *faults) gatewayProcess(ctx context.Context, cfg config.Config, ns *server.Server) (*gatewayProc, error) {
	nc, err := nats.Connect(ns.ClientURL(), nats.Name("udpgate gateway "+cfg.Node))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	inh, taken, err := node.TakeOver(ctx, cfg, f.log)
	if err != nil {
		cancel()
		nc.Close()
		return nil, err
	}
	run, err := node.StartGateway(ctx, cfg, f.log, nc, cfg.Listeners, nil, inh)
	inh.CloseUnused()
	if run == nil {
		cancel()
		nc.Close()
		if err == nil {
			err = errors.New("stopped before it was ready")
		}
		return nil, err
	}
	if taken != nil {
		if err := taken.Ready(ctx); err != nil {
			f.log.Warn("bench faults: the old gateway did not stop offering its sockets", "err", err)
		}
	}
	run.Go(func() error { return node.OfferSockets(run, cfg, f.log) })
	p := &gatewayProc{run: run, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = run.Wait()
	}()
	return p, nil
}

// stop stops the gateway (it drains) and waits for it.
func (p *gatewayProc) stop() {
	p.once.Do(func() {
		p.run.Stop()
		p.cancel()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
		}
		p.nc.Close()
	})
}
