package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
)

// runGateway is `udpgate gateway`.
func runGateway(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	if len(cfg.Listeners) == 0 {
		return errors.New("gateway: UDPGATE_LISTENERS is empty: name at least one listener, like 9000/raw")
	}
	nc, err := node.Connect(cfg, "udpgate gateway "+cfg.Node)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	defer nc.Close()
	var subs gateway.SubscriptionLister
	if cfg.DiscoverySubscriptions {
		subs = gateway.ClusterSubscriptions(nc)
	}
	// A gateway running on this host hands its sockets over, if
	// UDPGATE_HANDOVER names where it offers them: nothing sent to the
	// ports is lost while this process replaces it.
	inh, taken, err := node.TakeOver(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	run, err := node.StartGateway(ctx, cfg, log, nc, cfg.Listeners, subs, inh)
	inh.CloseUnused()
	if run == nil {
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		return nil
	}
	defer run.Stop()
	if taken != nil {
		if err := taken.Ready(ctx); err != nil {
			log.Warn("gateway: took the sockets over, but the process that had them did not stop offering them", "err", err)
		} else {
			log.Info("gateway: took the sockets over from the running gateway, which now stops", "sockets", len(taken.Sockets))
		}
	}
	if cfg.Handover != "" {
		run.Go(func() error { return node.OfferSockets(run, cfg, log) })
	}
	fmt.Fprintf(stdout, "udpgate gateway: node %s, NATS %s, replies on %s\n", cfg.Node, config.RedactURLs(nc.ConnectedUrlRedacted()), schemas.ReplySubject(cfg.Prefix, cfg.Node))
	for _, l := range cfg.Listeners {
		fmt.Fprintf(stdout, "  udp %s %s -> %s\n", l.Addr, l.Protocol, schemas.InSubject(cfg.Prefix, l.Addr.Port()))
	}
	if run.MetricsURL != "" {
		fmt.Fprintf(stdout, "  metrics %s/metrics, %s/healthz, %s/readyz\n", run.MetricsURL, run.MetricsURL, run.MetricsURL)
	}
	return run.Wait()
}

func newGatewayCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "gateway",
		Short: "the gateway alone, against the NATS server at UDPGATE_NATS_URL",
		Long: `Serves UDPGATE_LISTENERS against the NATS servers at UDPGATE_NATS_URL (or
NATS_URL). With UDPGATE_HANDOVER, a new gateway on the same host takes a
running one's sockets over, and the old one drains: an upgrade loses no
datagram.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runGateway(cmd.Context(), cfg.ForGateway(), log, cmd.OutOrStdout())
		},
	}
}
