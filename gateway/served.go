package gateway

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// DefaultServedInterval is how often the gateway reads the capture
// stream's consumers when Gateway.ServedInterval is zero.
const DefaultServedInterval = time.Second

// durables knows which subjects durable groups serve: the filter subjects
// of the capture stream's consumers, read at most every interval, and only
// while egress asks about requests no direct group took (so a gateway
// whose subjects all have direct groups asks JetStream nothing). Together
// with NATS's no-responders answer, it tells egress that nobody serves a
// request. Safe for concurrent use.
type durables struct {
	js       jetstream.JetStream
	stream   string
	interval time.Duration
	log      *slog.Logger
	view     atomic.Pointer[durableView] // the latest list read
	wanted   atomic.Bool                 // served was asked what the latest reading cannot tell
}

// durableView is one reading of the consumers' filters.
type durableView struct {
	at      time.Time // when the reading started: it knows every consumer created before
	filters []string
}

// run reads the consumers, every interval when a reading is wanted, until
// ctx ends.
func (d *durables) run(ctx context.Context) {
	t := time.NewTicker(d.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if d.wanted.Swap(false) {
				d.read(ctx)
			}
		}
	}
}

// read reads the consumers' filters once; a failed reading keeps the
// previous one, which then grows stale, and requests wait for their
// deadline as before.
func (d *durables) read(ctx context.Context) {
	at := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d.interval)
	defer cancel()
	st, err := d.js.Stream(ctx, d.stream)
	if err != nil {
		d.log.Debug("gateway: consumers of the capture", "stream", d.stream, "err", err)
		return
	}
	var filters []string
	list := st.ListConsumers(ctx)
	for info := range list.Info() {
		c := info.Config
		if c.FilterSubject == "" && len(c.FilterSubjects) == 0 {
			filters = append(filters, ">") // every subject of the stream
		}
		if c.FilterSubject != "" {
			filters = append(filters, c.FilterSubject)
		}
		filters = append(filters, c.FilterSubjects...)
	}
	if err := list.Err(); err != nil {
		d.log.Debug("gateway: consumers of the capture", "stream", d.stream, "err", err)
		return
	}
	d.view.Store(&durableView{at: at, filters: filters})
}

// served reports whether a durable group's consumer covers subject, from
// a reading that started after received (a consumer created later, with
// deliver policy new, would not get the request anyway). known is false
// when there is no such reading yet.
func (d *durables) served(subject string, received time.Time) (served, known bool) {
	v := d.view.Load()
	if v == nil || !v.at.After(received) {
		d.wanted.Store(true)
		return false, false
	}
	for _, f := range v.filters {
		if schemas.Match(f, subject) {
			return true, true
		}
	}
	return false, true
}

// readAt returns when the latest reading started; zero before the first.
func (d *durables) readAt() time.Time {
	if v := d.view.Load(); v != nil {
		return v.at
	}
	return time.Time{}
}
