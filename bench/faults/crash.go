package faults

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// leaderCrash: a 3-node JetStream cluster whose servers are child
// processes (startFaultNodes), the capture stream at 3 replicas led by
// n1, and two gateways connected as `udpgate gateway` connects
// (connectNATS, one URL; the others are learnt from the cluster): one to
// n2, with a coap listener answered by a direct echo group and a raw
// listener answered by a durable one (its consumer led by n3), and one to
// n1, the "home" gateway, with a coap listener answered by the same
// direct group. The workers are connected to n2. Three open loops share
// the rate: CoAP confirmable requests from a client that retransmits
// (RFC 7252 §4.2) to each coap listener, and numbered datagrams that are
// never resent to the raw one. At the middle of the load n1's process is
// killed (SIGKILL): its routes and clients see their connections drop,
// and the stream has no leader until an election timeout of the followers
// (4 to 9 s in nats-server) has passed. Targets: every CoAP request to the
// gateway on n2 answered; at most 0.1% of the durable group's requests
// lost. The home gateway must reconnect to another server: its figures
// are reported with no target.
func (f *faults) leaderCrash(ctx context.Context) error {
	c, err := startFaultNodes(ctx, 3)
	if err != nil {
		return err
	}
	defer c.close()
	victim, away, third := c.nodes[0], c.nodes[1], c.nodes[2]
	ctl, err := c.connect("udpgate bench faults control", away, third)
	if err != nil {
		return err
	}
	defer ctl.Close()

	cfg := f.cfg
	cfg.NATSAuth = config.NATSAuth{}
	deadline := cfg.Deadline
	connect := func(nd *faultNode, name string) (*nats.Conn, error) {
		cfg.NATSURL = config.URLs(nd.url)
		return node.Connect(cfg, name)
	}
	var stops []func() // of the gateways, the last started first
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	// startGateway serves a gateway connected to nd with a listener on
	// 127.0.0.1 for each protocol, and returns their addresses.
	startGateway := func(nd *faultNode, name string, protocols ...string) (*gateway.Gateway, *nats.Conn, []netip.AddrPort, error) {
		nc, err := connect(nd, "udpgate gateway "+name)
		if err != nil {
			return nil, nil, nil, err
		}
		g := &gateway.Gateway{
			NATS: nc, Node: name, Prefix: cfg.Prefix, Stream: ingress.StreamConfig{Replicas: 3},
			Deadline: deadline, CoAP: coap.Config{Piggyback: cfg.CoAPPiggyback}, DrainTimeout: -1, Log: f.log,
		}
		var addrs []netip.AddrPort
		for _, p := range protocols {
			conn, err := ingress.Listen(ctx, "udp4", "127.0.0.1:0", 4<<20)
			if err != nil {
				node.CloseListeners(g)
				nc.Close()
				return nil, nil, nil, err
			}
			g.Listeners = append(g.Listeners, gateway.Listener{Conn: conn, Protocol: p})
			addrs = append(addrs, conn.LocalAddr().(*net.UDPAddr).AddrPort())
		}
		stop, err := serveFaultGateway(ctx, g)
		if err != nil {
			nc.Close()
			return nil, nil, nil, err
		}
		stops = append([]func(){func() { stop(); nc.Close() }}, stops...)
		return g, nc, addrs, nil
	}
	g, _, addrs, err := startGateway(away, "faults-crash", schemas.ProtocolCoAP, schemas.ProtocolRaw)
	if err != nil {
		return err
	}
	coapAddr, durableAddr := addrs[0], addrs[1]
	hg, hnc, addrs, err := startGateway(victim, "faults-crash-home", schemas.ProtocolCoAP)
	if err != nil {
		return err
	}
	homeAddr := addrs[0]

	wnc, err := connect(away, "udpgate bench faults workers")
	if err != nil {
		return err
	}
	defer wnc.Close()
	wjs, err := jetstream.New(wnc)
	if err != nil {
		return err
	}
	wcfg := cfg
	wcfg.Delivery = workers.Direct
	stopDirect, err := serveGroup(node.NewWorker(wcfg, f.log, wjs, "echo-coap", []string{
		schemas.InSubject(cfg.Prefix, coapAddr.Port()) + ".>", schemas.InSubject(cfg.Prefix, homeAddr.Port()) + ".>",
	}, slowEcho(0), 64))
	if err != nil {
		return err
	}
	defer stopDirect()
	// The durable group's consumer is created here, as the worker would
	// create it, so that its leader can be moved before the worker starts.
	stream := schemas.StreamIn
	wcfg.Delivery = workers.Durable
	wcfg.Stream = stream
	dw := node.NewWorker(wcfg, f.log, wjs, "echo-durable", []string{schemas.InSubject(cfg.Prefix, durableAddr.Port())}, slowEcho(0), 64)
	if err := createConsumer(ctx, wjs, stream, dw); err != nil {
		return err
	}
	// The victim leads the capture stream; it is neither the server of
	// the gateway on n2 nor the consumer's leader (a pull request held by
	// a consumer leader that dies is replaced only when the client misses
	// its heartbeats, 30 s).
	streamInfo := "$JS.API.STREAM.INFO." + stream
	consumerInfo := "$JS.API.CONSUMER.INFO." + stream + "." + dw.Group
	if l, err := waitLeader(ctx, ctl, streamInfo, func(l string) bool { return l != "" }, 30*time.Second); err != nil {
		return err
	} else if l != victim.name {
		if err := moveLeader(ctx, ctl, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, streamInfo, victim.name); err != nil {
			return err
		}
	}
	if l, err := waitLeader(ctx, ctl, consumerInfo, func(l string) bool { return l != "" }, 30*time.Second); err != nil {
		return err
	} else if l == victim.name {
		if err := moveLeader(ctx, ctl, "$JS.API.CONSUMER.LEADER.STEPDOWN."+stream+"."+dw.Group, consumerInfo, third.name); err != nil {
			return err
		}
	}
	stopDurable, err := serveGroup(dw)
	if err != nil {
		return err
	}
	defer stopDurable()

	timeout := max(f.timeout, deadline+time.Second)
	rate := f.rate / 3
	lc, err := startFaultCoAPLoad(ctx, coapAddr, rate, f.duration, timeout)
	if err != nil {
		return err
	}
	defer lc.wait()
	lu, err := startLoad(ctx, durableAddr, rate, f.duration, timeout)
	if err != nil {
		return err
	}
	defer lu.wait()
	lh, err := startFaultCoAPLoad(ctx, homeAddr, rate, f.duration, timeout)
	if err != nil {
		return err
	}
	defer lh.wait()
	var reconnectedAt atomic.Int64 // ns since lu.start
	hnc.SetReconnectHandler(func(*nats.Conn) { reconnectedAt.CompareAndSwap(0, int64(time.Since(lu.start))) })

	if err := bench.Pause(ctx, f.duration/2); err != nil {
		return err
	}
	before := g.Stats()
	killAt := time.Since(lu.start)
	c.kill(victim)
	var elected time.Duration
	leader, err := waitLeader(ctx, ctl, streamInfo, func(l string) bool { return l != "" && l != victim.name }, 60*time.Second)
	if err != nil && ctx.Err() == nil {
		f.log.Error("bench faults: leader-crash: no new stream leader", "err", err)
	}
	if err == nil {
		elected = time.Since(lu.start) - killAt
	}
	lc.wait()
	lu.wait()
	lh.wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	after, home := g.Stats(), hg.Stats()
	reconnected := time.Duration(reconnectedAt.Load()) - killAt
	newLeader := "no new leader after 60 s"
	if elected > 0 {
		newLeader = fmt.Sprintf("a new leader (%s) after %s", leader, elected.Round(time.Millisecond))
	}
	crash := fmt.Sprintf("%s (stream leader) killed at %s, %s", victim.name, killAt.Round(time.Millisecond), newLeader)
	common := map[string]float64{"election_ms": float64(elected.Milliseconds())}

	rc := lc.count("leader-crash-coap")
	maps.Copy(rc.Extra, common)
	rc.Note = fmt.Sprintf("%s; the gateway on %s, CON requests from a client that retransmits (%.0f retransmitted)",
		crash, away.name, rc.Extra["retransmitted"])
	f.rows = append(f.rows, rc)
	f.goal("leader-crash-coap lost", float64(rc.Lost+rc.Late+rc.Failed), "<=", 0, rc.Sent > 0)

	ru := lu.count("leader-crash-durable", allRequests)
	name := strconv.Itoa(int(durableAddr.Port())) + "/raw"
	b, a := before.Ingress[name], after.Ingress[name]
	maps.Copy(ru.Extra, common)
	maps.Copy(ru.Extra, map[string]float64{
		"capture_retried": float64(a.CaptureRetried), "capture_failed": float64(a.CaptureFailed),
		"capture_retried_after_kill": float64(a.CaptureRetried - b.CaptureRetried),
		"fallback":                   float64(a.Fallback),
		"lost_pct":                   100 * float64(ru.Lost+ru.Late) / float64(max(ru.Sent, 1)),
	})
	ru.Note = fmt.Sprintf("%s; the gateway on %s sent %d requests to the durable group over core NATS (fallback), "+
		"retried %d capture copies, %d not captured by their deadline (%s)",
		crash, away.name, a.Fallback, a.CaptureRetried, a.CaptureFailed, deadline)
	f.rows = append(f.rows, ru)
	// 0.1%, or one request of a run too short for 0.1% to be one (a
	// short run sends 267): a copy JetStream acknowledged as its leader
	// died gets no fallback, and may be delivered after the election.
	limit := 0.1
	if n := float64(ru.Sent); n > 0 && n < 1000 {
		limit = 100 / n
	}
	f.goal("leader-crash-durable lost %", ru.Extra["lost_pct"], "<=", limit, ru.Sent > 0)

	rh := lh.count("leader-crash-coap-home")
	hname := strconv.Itoa(int(homeAddr.Port())) + "/coap"
	hi, hc := home.Ingress[hname], home.CoAP[hname]
	maps.Copy(rh.Extra, common)
	maps.Copy(rh.Extra, map[string]float64{
		"reconnect_ms": float64(reconnected.Milliseconds()), "nats_down": float64(hi.NATSDown),
		"republished": float64(hi.Republished), "gateway_5.03": float64(hc.Unavailable), "gateway_5.04": float64(hc.Timeouts),
	})
	reconn := "did not reconnect"
	if reconnectedAt.Load() != 0 {
		reconn = fmt.Sprintf("reconnected to %s after %s", hnc.ConnectedServerName(), reconnected.Round(time.Millisecond))
	}
	rh.Note = fmt.Sprintf("%s; the gateway on %s %s, answered %d requests 5.03 (no NATS) and %d 5.04 (no reply by the deadline); no target",
		crash, victim.name, reconn, hc.Unavailable, hc.Timeouts)
	f.rows = append(f.rows, rh)
	if elected == 0 {
		return errors.New("the stream had no new leader 60 s after the crash")
	}
	return nil
}
