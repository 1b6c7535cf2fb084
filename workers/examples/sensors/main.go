// Command sensors is the CoAP worker from the README: it serves
// GET /sensors/{id} on udpgate.in.5684. Run it next to
// `UDPGATE_LISTENERS=5684/coap udpgate run`.
package main

import (
	"context"
	"encoding/json"
	"log"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

var celsius = map[string]float64{"1": 21.5, "2": 19.0}

func main() {
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
		Group:    "sensors",
		Subjects: mux.Subjects(schemas.DefaultPrefix, 5684), // udpgate.in.5684.GET.sensors.*
		Handler:  mux,
	}
	log.Fatal(srv.ListenAndServe())
}
