// Command sensors is the CoAP worker from the README: a second group on
// port 5683, next to the built-in coap group of `udpgate run`, serving
// GET /sensors/{id} and announcing its resources for /.well-known/core.
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
	mux.SetLinks(workers.Links{"/sensors/1": `rt="temperature";ct=50`, "/sensors/2": `rt="temperature";ct=50`})
	srv := &workers.Server{
		Group:    "sensors",
		Subjects: mux.Subjects(schemas.DefaultPrefix, 5683), // udpgate.in.5683.GET.sensors.*
		Handler:  mux,
	}
	log.Fatal(srv.ListenAndServe())
}
