// Command upper is the worker from the README: it upper-cases every request
// on udpgate.in.9100. Run it next to `UDPGATE_LISTENERS=9100/raw udpgate run`.
package main

import (
	"bytes"
	"context"
	"github.com/udpgate/udpgate/workers"
	"log"
)

func main() { // a durable group instead: (&workers.Server{Delivery: workers.Durable, ...}).ListenAndServe()
	log.Fatal(workers.ListenAndServe("udpgate.in.9100", "upper", workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		_, err := w.Write(bytes.ToUpper(r.Body))
		return err
	})))
}
