package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

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
		if !slices.Contains(cfg.Builtins, b.Name) {
			continue
		}
		b.Port = cmp.Or(cfg.BuiltinPorts[b.Name], b.Port)
		i := slices.IndexFunc(listeners, func(l config.Listener) bool { return l.Addr.Port() == b.Port })
		if i < 0 { // a listener the user put on this port replaces the default
			i = len(listeners)
			listeners = append(listeners, b.Listener())
		}
		if listeners[i].Protocol == b.Protocol {
			ws = append(ws, node.Worker{Name: b.Worker, Group: b.Name, Listener: i})
		}
	}
	n, err := node.Start(ctx, cfg, log, node.Options{Listeners: listeners, Workers: ws})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("run: %w%s", err, listenerHint(err, cfg))
	}
	defer n.Close()
	var file *node.ListenersFile
	if cfg.ListenersFile != "" {
		// The built-ins' ports are taken: the file cannot list them.
		if file, err = node.StartListenersFile(n.Running, cfg, log, listeners, nil); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	if _, err := node.StartBridge(n.Running, cfg, log); err != nil {
		return fmt.Errorf("run: %w", err)
	}
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
		case schemas.ProtocolRPC, schemas.ProtocolWS:
			subject += ".SERVICE.METHOD"
		}
		fmt.Fprintf(tw, "  %s %s\t%s\t-> %s\t%s\n", transport(l), l.Addr, protocol(l), subject, who)
	}
	tw.Flush()
	printRuntimeListeners(stdout, cfg, file, n.MetricsURL)
	hints := tryHints(listeners, ws)
	if len(hints) == 0 {
		fmt.Fprintln(stdout, "no built-in workers (UDPGATE_BUILTINS): attach yours to the subjects above   (Ctrl-C stops)")
	}
	for i, hint := range hints {
		if i == 0 {
			fmt.Fprintf(stdout, "try: %s   (Ctrl-C stops)\n", hint)
		} else {
			fmt.Fprintf(stdout, "     %s\n", hint)
		}
	}
	return n.Wait()
}

// listenerHint says which variable to change when a listener could not
// be bound: UDPGATE_LISTENERS for the user's, UDPGATE_BUILTINS for a
// built-in one.
func listenerHint(err error, cfg config.Config) string {
	var le *node.ListenerError
	if !errors.As(err, &le) || !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return ""
	}
	if slices.ContainsFunc(cfg.Listeners, func(l config.Listener) bool { return l.Addr.Port() == le.Listener.Addr.Port() }) {
		return " (UDPGATE_LISTENERS)"
	}
	for _, b := range node.Builtins {
		if cmp.Or(cfg.BuiltinPorts[b.Name], b.Port) == le.Listener.Addr.Port() {
			return fmt.Sprintf(" (the built-in %s worker's listener: move it with UDPGATE_BUILTINS=%s=PORT, or leave %s out of UDPGATE_BUILTINS)", b.Name, b.Name, b.Name)
		}
	}
	return ""
}

// tryHints returns a `send` command for each built-in worker, for the
// start-up banner: a request it answers, on the listener it serves.
func tryHints(ls []config.Listener, ws []node.Worker) []string {
	var hints []string
	for _, w := range ws {
		l := ls[w.Listener]
		host := l.Addr.Addr()
		if host.IsUnspecified() {
			host = netip.MustParseAddr("127.0.0.1")
		}
		hp := netip.AddrPortFrom(host, l.Addr.Port()).String()
		if l.DTLS { // send speaks coaps://, with a key of UDPGATE_DTLS_PSK_FILE
			if w.Name == "coap" {
				hints = append(hints, "go run . send --psk-identity IDENTITY --psk KEY coaps://"+hp+"/time")
			}
			continue
		}
		switch w.Name {
		case "echo":
			hints = append(hints, "go run . send udp://"+hp+" hello")
		case "time":
			hints = append(hints, "go run . send udp://"+hp+` '[1, "t"]'`)
		case "coap":
			hints = append(hints, "go run . send coap://"+hp+"/time")
		case "places":
			url := "rpc://" + hp + "/"
			if l.Protocol == schemas.ProtocolWS {
				url = "ws://" + hp + strings.TrimSuffix(l.Path, "/") + "/"
			}
			hints = append(hints, "go run . send "+url+`InterestingPlaces/GetRandom '{"limit": 2}'`)
		}
	}
	return hints
}

func newRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "embedded NATS with JetStream, the gateway and the built-in workers, in one process",
		Long: `Starts an embedded NATS server with JetStream (store in UDPGATE_DATA_DIR), the
gateway on the built-in workers' listeners (9000/raw echo, 9001/raw time,
5683/coap coap, 7000/rpc places, 8080/ws places-ws: places for WebSocket
clients; UDPGATE_BUILTINS chooses which, off for none) and
UDPGATE_LISTENERS, and the built-in workers. A listener of
UDPGATE_LISTENERS on a built-in port replaces the built-in one. Outside
workers connect to its NATS server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runAll(cmd.Context(), cfg.ForGateway(), log, cmd.OutOrStdout())
		},
	}
}
