package builtin

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// NotifyTime publishes the time, as Time answers a CoAP GET /time, to the
// notify subject of /time on a coap listener's port (schemas.NotifySubject)
// every interval, until ctx ends: the gateway sends it to the observers of
// the built-in coap worker's /time (CoAP Observe, schemas/README.md). now
// is the clock; nil means time.Now. It returns nil when ctx ends.
func NotifyTime(ctx context.Context, nc *nats.Conn, prefix string, port uint16, interval time.Duration, now func() time.Time) error {
	if now == nil {
		now = time.Now
	}
	subject := schemas.NotifySubject(prefix, port, []string{"time"})
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		m := nats.NewMsg(subject)
		m.Header.Set(schemas.HeaderCoAPContentFormat, "0")
		m.Data = []byte(now().UTC().Format(time.RFC3339))
		// A publish that fails (NATS away) is the notification of a
		// second nobody will miss: the next one follows.
		nc.PublishMsg(m)
	}
}
