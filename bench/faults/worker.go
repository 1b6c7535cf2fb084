package faults

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"time"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// workerStopHandler is how long worker-stop's handler takes.
const workerStopHandler = 100 * time.Millisecond

// workerStop: a raw listener answered by a durable echo group of two
// instances whose handler takes 100 ms, under an open loop; at the
// middle of the load one instance is stopped gracefully (it handles what
// its open pulls bring, then naks what it still holds, and the other
// instance takes it at once). No request may be
// answered later than its usual latency (the 99th percentile before the
// stop: what the machine's own jitter allows) plus the handler's time plus
// 100 ms.
func (f *faults) workerStop(ctx context.Context) error {
	e, err := f.startFaultEnv()
	if err != nil {
		return err
	}
	defer e.close()
	cfg := f.faultCfg("faults-worker")
	cfg.Delivery = workers.Durable
	g, err := node.NewGateway(ctx, cfg, f.log, e.nc, []config.Listener{faultListener}, nil)
	if err != nil {
		return err
	}
	g.DrainTimeout = -1
	port := g.Listeners[0].Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	stopGateway, err := serveFaultGateway(ctx, g)
	if err != nil {
		return err
	}
	defer stopGateway()
	var (
		stops     []func()
		instances []*workers.Server
	)
	for range 2 {
		w := node.NewWorker(cfg, f.log, e.js, "echo-durable", []string{schemas.InSubject(cfg.Prefix, port.Port())}, slowEcho(workerStopHandler), faultConcurrency)
		stop, err := serveGroup(w)
		if err != nil {
			return err
		}
		stops = append(stops, stop)
		instances = append(instances, w)
	}
	// Stopped before the gateway, deferred above: the last instance.
	defer stops[1]()

	l, err := startLoad(ctx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port.Port()), f.rate, f.duration, f.timeout)
	if err != nil {
		stops[0]()
		return err
	}
	bench.Pause(ctx, f.duration/2)
	stopAt := time.Since(l.start)
	stops[0]()
	stopped := time.Since(l.start) - stopAt
	l.wait()

	r := l.count("worker-stop", allRequests)
	before := l.count("", func(id int, at time.Duration) bool { return at < stopAt && l.replies[id] > 0 && l.first[id] < stopAt })
	// Affected: the requests answered after the stop began, or never.
	after := l.count("", func(id int, at time.Duration) bool { return l.replies[id] == 0 || l.first[id] >= stopAt })
	usual := time.Duration(before.P99us) * time.Microsecond
	// The worst latency after the stop, late replies included; a request
	// never answered counts as the longest the client waited, unless the
	// gateway never read it: when the requests unanswered are no more than
	// those the kernel dropped before the gateway read them (a loaded
	// machine), they say nothing of the stop.
	name := schemas.Listener(port.Port(), schemas.ProtocolRaw)
	unread := max(int(l.sent.Load())-int(g.Stats().Ingress[name].Received), 0)
	unanswered := 0
	for id := range int(l.sent.Load()) {
		if l.replies[id] == 0 {
			unanswered++
		}
	}
	var (
		worst time.Duration
		slow  int // answered more than a second late
	)
	for id := range int(l.sent.Load()) {
		lat := time.Duration(l.first[id] - time.Duration(l.sentAt[id].Load()))
		switch {
		case l.replies[id] == 0 && unanswered <= unread:
			continue
		case l.replies[id] == 0:
			lat = f.timeout + faultGrace
		case l.first[id] < stopAt:
			continue
		}
		worst = max(worst, lat)
		if lat > usual+time.Second {
			slow++
		}
	}
	retried := instances[0].Stats().Retried
	maps.Copy(r.Extra, map[string]float64{
		"usual_p99_ms": float64(usual.Microseconds()) / 1e3, "max_after_stop_ms": float64(worst.Microseconds()) / 1e3,
		"stop_ms": float64(stopped.Milliseconds()), "given_back": float64(retried), "over_1s_late": float64(slow),
		"not_read_by_gateway": float64(unread),
	})
	r.Note = fmt.Sprintf("one of two instances stopped at %s (in %s), giving back %d requests; latency before %s (p99), at most %s for the %d requests answered after the stop began",
		stopAt.Round(time.Millisecond), stopped.Round(time.Millisecond), retried, usual.Round(time.Millisecond), worst.Round(time.Millisecond), after.Sent)
	if slow > 0 {
		r.Note += fmt.Sprintf("; %d more than 1 s later than usual (redelivered after the ack wait?)", slow)
	}
	if unread > 0 {
		r.Note += fmt.Sprintf("; %d never read by the gateway (dropped by the kernel: a loaded machine), %d unanswered", unread, unanswered)
	}
	f.rows = append(f.rows, r)
	f.goal("worker-stop max latency after stop - p99 before (ms)", float64((worst-usual).Microseconds())/1e3, "<=",
		float64((workerStopHandler + 100*time.Millisecond).Milliseconds()), before.Sent > 0 && after.Sent > 0)
	return nil
}
