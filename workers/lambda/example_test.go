package lambda_test

import (
	"context"
	"log"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/lambda"
)

// A worker group that answers every datagram on port 9000 with the
// function "upper". Region, credentials and endpoint come from the
// standard AWS chain (AWS_REGION, AWS_ENDPOINT_URL_LAMBDA, ...). The group
// is durable: while Lambda throttles, requests wait in the capture stream
// instead of being dropped (workers.Direct, the default, answers sooner).
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client, err := lambda.NewClient(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	bridge := &lambda.Bridge{
		Client:         client,
		Function:       "upper", // a name, an ARN, or "name:alias"
		MaxInvocations: 8,
		Log:            slog.Default(),
	}
	defer bridge.Close() // after Serve has returned
	srv := &workers.Server{
		NATS:        nc,
		Delivery:    workers.Durable,
		Group:       "lambda-upper",
		Subjects:    []string{schemas.InSubject(schemas.DefaultPrefix, 9000)},
		Handler:     bridge,
		Concurrency: bridge.Concurrency(),
	}
	if err := srv.Serve(ctx); err != nil {
		log.Print(err)
	}
}
