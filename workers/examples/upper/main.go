// Command upper is the worker from the README: it upper-cases every request
// on udpgate.in.9100. Run it next to `UDPGATE_LISTENERS=9100/raw udpgate run`.
package main

import (
	"bytes"
	"context"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/workers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		panic(err)
	}
	js, _ := jetstream.New(nc)
	srv := &workers.Server{
		JetStream: js,
		Group:     "upper", // every instance of the group shares the work
		Subjects:  []string{"udpgate.in.9100"},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}),
	}
	if err := srv.Serve(ctx); err != nil {
		panic(err)
	}
}
