package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
)

// runGateway is `udpgate gateway`.
func runGateway(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	if len(cfg.Listeners) == 0 && cfg.ListenersFile == "" && !cfg.Bridge.On() {
		return errors.New("gateway: UDPGATE_LISTENERS is empty: name at least one listener, like 9000/raw " +
			"(or a listener file, UDPGATE_LISTENERS_FILE, or ports to lease, UDPGATE_BRIDGE_PORTS)")
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
	if run == nil {
		inh.CloseUnused()
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		return nil
	}
	defer run.Stop()
	var file *node.ListenersFile
	if cfg.ListenersFile != "" {
		// The file's listeners take their sockets from the hand-over too.
		if file, err = node.StartListenersFile(run, cfg, log, cfg.Listeners, inh); err != nil {
			inh.CloseUnused()
			run.Stop()
			run.Wait()
			return fmt.Errorf("gateway: %w", err)
		}
	}
	inh.CloseUnused()
	if _, err := node.StartBridge(run, cfg, log); err != nil {
		run.Stop()
		run.Wait()
		return fmt.Errorf("gateway: %w", err)
	}
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
		fmt.Fprintf(stdout, "  %s %s %s -> %s\n", transport(l), l.Addr, protocol(l), schemas.InSubject(cfg.Prefix, l.Addr.Port()))
	}
	printRuntimeListeners(stdout, cfg, file, run.MetricsURL)
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

// printRuntimeListeners prints what may change while the node runs: the
// listener file's listeners (file may be nil) and the ports offered to
// lease, with where to ask for them (base, the HTTP endpoint's URL).
func printRuntimeListeners(w io.Writer, cfg config.Config, file *node.ListenersFile, base string) {
	if file != nil {
		fmt.Fprintf(w, "  listener file %s (read again on SIGHUP and when it changes):\n", cfg.ListenersFile)
		for _, l := range file.Listeners() {
			fmt.Fprintf(w, "    %s %s %s -> %s\n", transport(l), l.Addr, protocol(l), schemas.InSubject(cfg.Prefix, l.Addr.Port()))
		}
	}
	if !cfg.Bridge.On() {
		return
	}
	ports := make([]string, len(cfg.Bridge.Ports))
	for i, r := range cfg.Bridge.Ports {
		ports[i] = r.String()
	}
	http := "off (no UDPGATE_BRIDGE_TOKEN)"
	if cfg.Bridge.Token != "" && base != "" {
		http = base + "/v1/udp/ (bearer token)"
	}
	fmt.Fprintf(w, "  leases    ports %s: over HTTP %s, over NATS %s.bind.%s.*\n",
		strings.Join(ports, ","), http, cfg.Prefix, schemas.EscapeToken(cfg.Node))
}

// transport names the socket of l: tcp for a ws listener, udp for the
// others.
func transport(l config.Listener) string {
	if l.Protocol == schemas.ProtocolWS {
		return "tcp"
	}
	return "udp"
}

// protocol is l's protocol as UDPGATE_LISTENERS writes it: wss for a ws
// listener over TLS.
func protocol(l config.Listener) string {
	switch {
	case l.TLS:
		return config.ProtocolWSS
	case l.DTLS && l.Protocol == schemas.ProtocolCoAP:
		return config.ProtocolCoAPS
	case l.DTLS:
		return config.ProtocolDTLS
	}
	return l.Protocol
}
