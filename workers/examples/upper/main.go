// Command upper is the worker from the README: it upper-cases every request
// on udpgate.in.9100, as an instance of group "upper" (start several: they
// share the work). Run it next to `UDPGATE_LISTENERS=9100/raw udpgate run`;
// it connects to UDPGATE_NATS_URL, by default nats://127.0.0.1:4222, and
// stops on Ctrl-C.
package main

import (
	"bytes"
	"context"
	"errors"
	"log"

	"github.com/udpgate/udpgate/workers"
)

func main() {
	err := workers.ListenAndServe("udpgate.in.9100", "upper", workers.HandlerFunc(
		func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}))
	if !errors.Is(err, workers.ErrStopped) {
		log.Fatal(err)
	}
}
