package cli

import (
	"github.com/spf13/cobra"

	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"text/tabwriter"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/schemas"
)

// runAll is `udpgate run`: an embedded NATS server with JetStream, the
// gateway on the default listeners plus UDPGATE_LISTENERS, and the built-in
// workers, until ctx is cancelled.
func runAll(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	listeners := cfg.Listeners
	var ws []node.Worker
	for _, b := range node.Builtins {
		i := slices.IndexFunc(listeners, func(l config.Listener) bool { return l.Addr.Port() == b.Port })
		if i < 0 { // a listener the user put on this port replaces the default
			i = len(listeners)
			listeners = append(listeners, b.Listener())
		}
		if listeners[i].Protocol == b.Protocol {
			ws = append(ws, node.Worker{Name: b.Worker, Listener: i})
		}
	}
	n, err := node.Start(ctx, cfg, log, node.Options{Listeners: listeners, Workers: ws})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("run: %w", err)
	}
	defer n.Close()
	fmt.Fprintf(stdout, "udpgate %s: node %s\n", "run", cfg.Node)
	fmt.Fprintf(stdout, "  NATS      %s (JetStream store %s): outside workers connect here\n", n.NATS.ClientURL(), cfg.DataDir)
	if n.MetricsURL != "" {
		fmt.Fprintf(stdout, "  metrics   %s/metrics, %s/healthz, %s/readyz\n", n.MetricsURL, n.MetricsURL, n.MetricsURL)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	for i, l := range listeners {
		who := "no built-in worker: attach yours to this subject"
		if j := slices.IndexFunc(ws, func(w node.Worker) bool { return w.Listener == i }); j >= 0 {
			who = "worker " + ws[j].Name
		}
		subject := schemas.InSubject(cfg.Prefix, l.Addr.Port())
		switch l.Protocol {
		case schemas.ProtocolCoAP:
			subject += ".METHOD.PATH..."
		case schemas.ProtocolRPC:
			subject += ".SERVICE.METHOD"
		}
		fmt.Fprintf(tw, "  udp %s\t%s\t-> %s\t%s\n", l.Addr, l.Protocol, subject, who)
	}
	tw.Flush()
	for i, hint := range tryHints(listeners) {
		if i == 0 {
			fmt.Fprintf(stdout, "try: %s   (Ctrl-C stops)\n", hint)
		} else {
			fmt.Fprintf(stdout, "     %s\n", hint)
		}
	}
	return n.Wait()
}

// tryHints returns a `send` command for the first listener of each
// protocol, for the start-up banner.
func tryHints(ls []config.Listener) []string {
	var hints []string
	seen := map[string]bool{}
	for _, l := range ls {
		if seen[l.Protocol] {
			continue
		}
		seen[l.Protocol] = true
		host := l.Addr.Addr()
		if host.IsUnspecified() {
			host = netip.MustParseAddr("127.0.0.1")
		}
		hp := netip.AddrPortFrom(host, l.Addr.Port()).String()
		switch l.Protocol {
		case schemas.ProtocolRaw:
			hints = append(hints, "go run . send udp://"+hp+" hello")
		case schemas.ProtocolCoAP:
			hints = append(hints, "go run . send coap://"+hp+"/time")
		case schemas.ProtocolRPC:
			hints = append(hints, "go run . send rpc://"+hp+`/InterestingPlaces/GetRandom '{"limit": 2}'`)
		}
	}
	return hints
}

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "embedded NATS with JetStream, the gateway and the built-in workers, in one process",
		Long: `Starts an embedded NATS server with JetStream (store in UDPGATE_DATA_DIR), the
gateway on the built-in listeners (9000/raw echo, 9001/raw time, 5683/coap,
7000/rpc places) and UDPGATE_LISTENERS, and the built-in workers. Outside
workers connect to its NATS server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runAll(cmd.Context(), cfg, log, cmd.OutOrStdout())
		},
	}
}
