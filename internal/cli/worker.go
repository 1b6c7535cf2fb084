package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/workers/builtin"
)

// runWorker is `udpgate worker NAME`.
func runWorker(ctx context.Context, cfg config.Config, log *slog.Logger, name string) error {
	h, ok := builtin.Lookup(name)
	if !ok {
		return fmt.Errorf("worker: unknown worker %q (built-in: %s)", name, strings.Join(builtin.Names(), ", "))
	}
	subjects := cfg.WorkerSubjects
	if len(subjects) == 0 {
		subjects = node.BuiltinSubjects(name, cfg.Prefix)
	}
	group := cfg.WorkerGroup
	if group == "" {
		group = name
	}
	nc, js, err := node.ConnectJetStream(cfg, "udpgate worker "+name)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer nc.Close()
	w := node.NewWorker(cfg, log, js, group, subjects, h, cfg.WorkerConcurrency)
	log.Info("worker: serving", "worker", name, "group", group, "subjects", subjects)
	if err := node.ServeWorker(ctx, cfg, log, nc, w, nil); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

func newWorkerCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "worker NAME",
		Short: "a built-in worker (echo, time, coap, places), against UDPGATE_NATS_URL",
		Long: `Serves the built-in worker NAME as a member of the group UDPGATE_WORKER_GROUP
(default NAME), on its built-in listener's subjects unless
UDPGATE_WORKER_SUBJECTS names others.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: builtin.Names(),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, log, err := loadConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runWorker(cmd.Context(), cfg.ForWorker(), log, args[0])
		},
	}
}
