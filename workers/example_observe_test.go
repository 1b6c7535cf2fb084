package workers_test

import (
	"context"
	"log"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/workers"
)

// A sensor that reads its value only while a CoAP client observes it, on
// any gateway node: Observed asks the gateways' Observe bucket. When in
// doubt (the bucket cannot be read), it notifies all the same.
func ExampleNotifier_Observed() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	n := &workers.Notifier{NATS: nc, Port: 5683}
	ctx := context.Background()
	for range time.Tick(time.Second) {
		if ok, err := n.Observed(ctx, "/sensors/1"); err == nil && !ok {
			continue
		}
		reading := strconv.FormatFloat(readTemperature(), 'f', 1, 64)
		if err := n.Notify(ctx, "/sensors/1", workers.Representation{ContentFormat: 0, Body: []byte(reading)}); err != nil {
			log.Print(err)
		}
	}
}

// readTemperature stands for an expensive reading.
func readTemperature() float64 { return 21.5 }
