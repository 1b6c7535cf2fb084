package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/bench"
	"github.com/udpgate/udpgate/bench/faults"
	"github.com/udpgate/udpgate/internal/config"
)

// newFaultsCmd is `udpgate bench faults`.
func newFaultsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "faults",
		Short: "the fault suite: faults injected under load on loopback, and what each cost",
		Long:  faults.Description + "\nScenarios: " + strings.Join(faults.ScenarioNames(), ", "),
		Args:  cobra.NoArgs,
	}
	var o faults.Options
	fs := cmd.Flags()
	fs.BoolVar(&o.Short, "short", false, "a short run for CI: 2s per scenario at 400 requests/s (unless --duration or --rate say otherwise)")
	fs.DurationVar(&o.Duration, "duration", 0, "load of each scenario, the fault at its middle (default 16s; 2s with --short)")
	fs.Float64Var(&o.Rate, "rate", 0, "requests per second of the open loop (default 2000; 400 with --short)")
	fs.DurationVar(&o.Timeout, "timeout", bench.DefaultTimeout, "a reply later than this is late")
	scenarios := fs.String("scenarios", "", "comma-separated scenarios to run (default: all)")
	asJSON := fs.Bool("json", false, "print the report as JSON on standard output")
	node := fs.String(faults.NodeFlag, "", "run one NATS server of leader-crash's cluster (the suite starts its children so)")
	fs.MarkHidden(faults.NodeFlag)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if *node != "" {
			return faults.RunNode(ctx, *node, os.Stdin, stdout)
		}
		if o.Duration < 0 || o.Rate < 0 || o.Timeout <= 0 {
			return usageErrorf(cmd, "--duration and --rate must not be negative, --timeout must be positive")
		}
		o.Scenarios = config.SplitList(*scenarios)
		cfg, err := config.Load()
		if err != nil {
			return err
		}
		cfg.LogLevel = max(cfg.LogLevel, slog.LevelError)
		if isTerminal(stderr) {
			o.Progress = stderr
		}
		report, err := faults.Run(ctx, cfg, newLogger(stderr, cfg), o)
		if errors.Is(err, faults.ErrUnknownScenario) {
			return usageErrorf(cmd, "%v", err)
		}
		if err != nil {
			return fmt.Errorf("bench faults: %w", err)
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(report)
		}
		fmt.Fprintf(stdout, "udpgate bench faults: %s per scenario at %.0f requests/s, timeout %s; %d CPUs (%s), %s\n",
			report.Machine["duration"], report.Machine["rate"], report.Machine["timeout"], runtime.NumCPU(), bench.CPUModel(), runtime.Version())
		return report.WriteText(stdout)
	}
	return cmd
}
