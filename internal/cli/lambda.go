package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/observe"
	"github.com/udpgate/udpgate/schemas"
	lambdabridge "github.com/udpgate/udpgate/workers/lambda"
)

// runLambda is `udpgate lambda`: a worker group that invokes an AWS Lambda
// function for each request.
func runLambda(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	lc := cfg.Lambda
	var problems []string
	if lc.Function == "" {
		problems = append(problems, "UDPGATE_LAMBDA_FUNCTION: required by lambda (a function name, ARN or alias)")
	}
	if len(lc.Subjects) == 0 {
		problems = append(problems, "UDPGATE_LAMBDA_SUBJECTS: required by lambda (the subjects to serve, like "+schemas.InSubject(cfg.Prefix, 9000)+")")
	}
	if len(problems) > 0 {
		return &config.Error{Problems: problems}
	}
	client, err := lambdabridge.NewClient(ctx, lc.Endpoint)
	if err != nil {
		return err
	}
	group := lc.Group
	if group == "" {
		group = "lambda-" + schemas.EscapeToken(lc.Function)
	}
	nc, js, err := node.ConnectJetStream(cfg, "udpgate lambda "+lc.Function)
	if err != nil {
		return fmt.Errorf("lambda: %w", err)
	}
	defer nc.Close()
	b := &lambdabridge.Bridge{
		Client:         client,
		Function:       lc.Function,
		Shape:          lc.Event,
		BatchSize:      lc.BatchSize,
		BatchWindow:    lc.BatchWindow,
		MaxInvocations: lc.Concurrency,
		InvokeTimeout:  lc.Timeout,
		Log:            log,
	}
	defer b.Close()
	w := node.NewWorker(cfg, log, js, group, lc.Subjects, b, b.Concurrency())
	log.Info("lambda: serving", "function", lc.Function, "event", lc.Event, "group", group, "subjects", lc.Subjects)
	err = node.ServeWorker(ctx, cfg, log, nc, w, func(obs *observe.Server) error {
		return observe.RegisterLambda(obs.Registry, b, lc.Function)
	})
	if err != nil {
		return fmt.Errorf("lambda: %w", err)
	}
	return nil
}

func newLambdaCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "lambda",
		Short: "invoke UDPGATE_LAMBDA_FUNCTION for each request on UDPGATE_LAMBDA_SUBJECTS",
		Long: `A worker group that invokes an AWS Lambda function for each request (or a
batch of them), with the AWS SDK's usual credentials and region.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runLambda(cmd.Context(), cfg.ForWorker(), log)
		},
	}
}
