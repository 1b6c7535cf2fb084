// Command sensors is the CoAP worker from the README: it serves
// GET /sensors/{id} on udpgate.in.5684. Run it next to
// `UDPGATE_LISTENERS=5684/coap udpgate run`.
package main

import (
	"context"
	"encoding/json"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

var celsius = map[string]float64{"1": 21.5, "2": 19.0}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		panic(err)
	}
	js, _ := jetstream.New(nc)

	mux := workers.NewMux()
	mux.RouteFunc("GET /sensors/{id}", func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		resp := workers.NewCoAPResponse(w)
		c, ok := celsius[r.PathValue("id")]
		if !ok {
			resp.SetCode(workers.NotFound)
			return nil
		}
		resp.SetContentFormat(50) // application/json
		return json.NewEncoder(resp).Encode(map[string]any{"id": r.PathValue("id"), "celsius": c})
	})
	srv := &workers.Server{
		JetStream: js,
		Group:     "sensors",
		Subjects:  mux.Subjects(schemas.DefaultPrefix, 5684), // udpgate.in.5684.GET.sensors.*
		Handler:   mux,
	}
	if err := srv.Serve(ctx); err != nil {
		panic(err)
	}
}
