package observe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// DefaultCacheFor is how long a successful JetStream check is trusted
// before it is asked again.
const DefaultCacheFor = 5 * time.Second

// NATSConnected is a check that nc is connected (not reconnecting, not
// closed).
func NATSConnected(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("connection is %s", st)
		}
		return nil
	}
}

// cached returns f with its successes remembered for d: a readiness probe
// every second then costs one JetStream request per d. Failures are not
// remembered, so recovery shows at the next probe.
func cached(d time.Duration, f func(context.Context) error) func(context.Context) error {
	if d <= 0 {
		d = DefaultCacheFor
	}
	var (
		mu sync.Mutex // guards ok
		ok time.Time  // when f last succeeded
	)
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if !ok.IsZero() && time.Since(ok) < d {
			return nil
		}
		if err := f(ctx); err != nil {
			ok = time.Time{}
			return err
		}
		ok = time.Now()
		return nil
	}
}

// StreamReachable is a check that JetStream answers for stream: a stream
// info request, at most once per cacheFor (DefaultCacheFor if zero) while
// it succeeds.
func StreamReachable(js jetstream.JetStream, stream string, cacheFor time.Duration) func(context.Context) error {
	return cached(cacheFor, func(ctx context.Context) error {
		if _, err := js.Stream(ctx, stream); err != nil {
			return fmt.Errorf("stream %s: %w", stream, err)
		}
		return nil
	})
}

// GatewayServing is a check that g has bound its listeners and receives
// replies.
func GatewayServing(g *gateway.Gateway) func(context.Context) error {
	return func(context.Context) error {
		select {
		case <-g.Ready():
			return nil
		default:
			return errors.New("listeners not serving yet")
		}
	}
}

// WorkerBound is a check that w receives its group's requests: a direct
// group's subscriptions are registered (the NATS connection, checked
// apart, keeps them); a durable group has bound its consumer, and
// JetStream still answers for it (at most once per cacheFor while it
// does).
func WorkerBound(w *workers.Server, cacheFor time.Duration) func(context.Context) error {
	info := cached(cacheFor, func(ctx context.Context) error {
		if w.Delivery == workers.Direct {
			return nil
		}
		stream := w.Stream
		if stream == "" {
			stream = schemas.StreamIn
		}
		if _, err := w.JetStream.Consumer(ctx, stream, w.Group); err != nil {
			return fmt.Errorf("consumer %s on stream %s: %w", w.Group, stream, err)
		}
		return nil
	})
	return func(ctx context.Context) error {
		select {
		case <-w.Ready():
		default:
			return fmt.Errorf("group %s: not receiving requests yet", w.Group)
		}
		return info(ctx)
	}
}
