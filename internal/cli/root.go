// Package cli is the udpgate command: one file per subcommand, each a
// cobra command whose body wires packages together. main calls Main.
//
//	udpgate run                 one-command start: embedded NATS, gateway, built-in workers
//	udpgate gateway             the gateway alone, against UDPGATE_NATS_URL
//	udpgate worker NAME         a built-in worker (echo, time, coap, places) against UDPGATE_NATS_URL
//	udpgate lambda              an AWS Lambda function as a worker group
//	udpgate send URL [PAYLOAD]  send a request (udp://, coap://, rpc://) and print the reply
//	udpgate bench URL           load a target; bench suite, bench faults: the suites
//	udpgate replay, pcap        replay the capture; bring pcaps in and out
//	udpgate status              who serves what on a running gateway
//	udpgate healthcheck         exit 0 when a process's /readyz answers 200 (container health checks)
//	udpgate version             the version, commit and Go version
//
// Configuration comes from UDPGATE_* environment variables (internal/config);
// `udpgate help` lists them.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/version"
)

// Main runs the udpgate command with the process's arguments and returns
// its exit status: 0, 1 for a failure, 2 for a usage error.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal stops gracefully (a gateway answers what it
	// holds); a second one ends the process at once, as by default.
	context.AfterFunc(ctx, stop)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errUsage) {
		fmt.Fprintln(os.Stderr, "udpgate:", err)
	}
	return exitCode(err)
}

// errUsage is returned for a usage error, once the usage is printed.
var errUsage = errors.New("usage")

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is a usage error whose message is printed: exit status 2.
func usageError(err error) error { return &exitError{code: 2, err: err} }

func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errUsage):
		return 2
	}
	return 1
}

// Run runs the udpgate command with args (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := newRoot(stdout, stderr)
	root.SetArgs(singleDashFlags(root, args))
	return root.ExecuteContext(ctx)
}

// newRoot returns the udpgate command and its subcommands.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "udpgate",
		Short: "a UDP API gateway on NATS JetStream",
		Long: `udpgate: a UDP API gateway on NATS JetStream.

Clients send datagrams (plain UDP, CoAP or protobuf RPC) to real ports;
worker groups answer them through NATS; every datagram is captured in
JetStream, so traffic can be replayed.`,
		Args:          cobra.ArbitraryArgs,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return usageErrorf(cmd, "which command?")
		}
		msg := fmt.Sprintf("unknown command %q", args[0])
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += " (did you mean " + strings.Join(s, " or ") + "?)"
		}
		return usageErrorf(cmd, "%s", msg)
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n%s", cmd.CommandPath(), err, cmd.UsageString())
		return errUsage
	})
	root.AddGroup(&cobra.Group{ID: "serve", Title: "Serving:"}, &cobra.Group{ID: "tools", Title: "Tools:"})
	for _, c := range []*cobra.Command{newRunCmd(), newGatewayCmd(), newWorkerCmd(), newLambdaCmd()} {
		c.GroupID = "serve"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{newSendCmd(), newBenchCmd(), newReplayCmd(), newPcapCmd(), newStatusCmd(), newHealthcheckCmd(), newVersionCmd()} {
		c.GroupID = "tools"
		root.AddCommand(c)
	}
	usageOnBadArgs(root)
	root.SetUsageTemplate(root.UsageTemplate() + `{{if not .HasParent}}
Environment (every command reads these; NATS_URL is used when UDPGATE_NATS_URL is unset):
{{environment}}{{end}}`)
	cobra.AddTemplateFunc("environment", func() string {
		var b strings.Builder
		config.Usage(&b)
		return b.String()
	})
	return root
}

// usageOnBadArgs makes wrong arguments a usage error (exit status 2, the
// usage on standard error) in cmd and its subcommands, and a command that
// only groups subcommands (pcap) a usage error when run alone.
func usageOnBadArgs(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageErrorf(c, "%v", err)
			}
			return nil
		}
	}
	if !cmd.Runnable() && cmd.HasParent() {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf(c, "unknown command %q", args[0])
			}
			return usageErrorf(c, "which one?")
		}
	}
	for _, c := range cmd.Commands() {
		usageOnBadArgs(c)
	}
}

// singleDashFlags rewrites -name and -name=value, the single-dash spelling
// of Go's flag package that udpgate used first, to --name for the long
// flags of the command args run; short flags (-c, -v) stay.
func singleDashFlags(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == nil {
		return args
	}
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && lookupFlag(cmd, name) != nil {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

func lookupFlag(cmd *cobra.Command, name string) *pflag.Flag {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f
	}
	return cmd.InheritedFlags().Lookup(name)
}

// loadConfig reads the configuration, and the logger it asks for, on
// stderr.
func loadConfig(stderr io.Writer) (config.Config, *slog.Logger, error) {
	cfg, err := config.Load()
	if err != nil {
		return cfg, nil, err
	}
	return cfg, newLogger(stderr, cfg), nil
}

// newLogger returns the process's logger on w: text on a terminal and JSON
// otherwise, unless UDPGATE_LOG_FORMAT says which.
func newLogger(w io.Writer, cfg config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	format := cfg.LogFormat
	if format == "auto" || format == "" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// isTerminal reports whether w is a terminal (not a file, a pipe or
// /dev/null).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// usageErrorf prints msg and the usage of cmd on its stderr, and returns
// errUsage.
func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n%s", cmd.CommandPath(), fmt.Sprintf(format, args...), cmd.UsageString())
	return errUsage
}
