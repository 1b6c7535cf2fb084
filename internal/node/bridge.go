package node

import (
	"fmt"
	"log/slog"

	"github.com/udpgate/udpgate/bridge"
	"github.com/udpgate/udpgate/internal/config"
)

// StartBridge offers r's gateway's ports to lease (cfg.Bridge, the
// koi_udp API of docs/bridge.md): its HTTP API under /v1/udp/ on r's HTTP
// endpoint, its NATS service on the gateway's connection
// (PREFIX.bind.NODE.*), its metrics, and runs it as one more part of r
// until r stops. With UDPGATE_BRIDGE_PORTS empty every request is refused
// (403, reason off) and NATS offers nothing. Call it once, after
// StartGateway (or Start) has returned.
func StartBridge(r *Running, cfg config.Config, log *slog.Logger) (*bridge.Bridge, error) {
	b := &bridge.Bridge{
		Gateway: r.Gateway,
		NATS:    r.Gateway.NATS,
		Node:    cfg.Node,
		Prefix:  cfg.Prefix,
		Config:  cfg.Bridge,
		Guard:   cfg.Guard,
		RcvBuf:  cfg.RcvBuf,
		Log:     log,
	}
	if err := b.Register(r.Observe.Registry); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	r.Observe.Handle("/v1/udp/", b.Handler())
	r.Go(func() error { return b.Serve(r.Context()) })
	return b, nil
}
