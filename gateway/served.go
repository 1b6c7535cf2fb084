package gateway

import (
	"cmp"
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// DefaultServedInterval is the staleness of the gateway's knowledge of
// durable groups when Gateway.ServedInterval is zero.
const DefaultServedInterval = time.Second

// durables knows which subjects durable groups serve: the filter subjects
// of the capture stream's consumers. It reads them when egress asks about
// a request no direct group took and the latest reading is older than
// interval at the request's arrival, so a gateway whose subjects all have
// direct groups asks JetStream nothing, and under a steady flow of
// unserved requests it reads at most once per interval. Together with
// NATS's no-responders answer, it tells egress that nobody serves a
// request. Safe for concurrent use.
type durables struct {
	js       jetstream.JetStream
	stream   string
	interval time.Duration
	log      *slog.Logger
	// onRead, if not nil, is called after each reading: egress decides
	// what waited for it.
	onRead func()
	view   atomic.Pointer[durableView] // the latest list read
	kick   chan struct{}               // buffered: a reading is wanted
}

// durableView is one reading of the consumers' filters.
type durableView struct {
	at        time.Time // when the reading started: it knows every consumer created before
	filters   []string  // every consumer's
	consumers []consumer
}

// consumer is one consumer of the capture stream: a durable group.
type consumer struct {
	name    string
	filters []string
}

func newDurables(js jetstream.JetStream, stream string, interval time.Duration, log *slog.Logger) *durables {
	return &durables{js: js, stream: stream, interval: interval, log: log, kick: make(chan struct{}, 1)}
}

// run reads the consumers whenever a reading is wanted, until ctx ends.
// After a failed reading it waits interval before the next.
func (d *durables) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		}
		ok := d.read(ctx)
		if d.onRead != nil {
			d.onRead()
		}
		if !ok {
			t := time.NewTimer(d.interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// read reads the consumers' filters once; a failed reading keeps the
// previous one, which then grows stale, and requests wait for their
// deadline as before. It reports whether the reading succeeded.
func (d *durables) read(ctx context.Context) bool {
	at := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d.interval)
	defer cancel()
	st, err := d.js.Stream(ctx, d.stream)
	if err != nil {
		d.log.Debug("gateway: consumers of the capture", "stream", d.stream, "err", err)
		return false
	}
	var filters []string
	var consumers []consumer
	list := st.ListConsumers(ctx)
	for info := range list.Info() {
		c := info.Config
		var fs []string
		if c.FilterSubject == "" && len(c.FilterSubjects) == 0 {
			fs = append(fs, ">") // every subject of the stream
		}
		if c.FilterSubject != "" {
			fs = append(fs, c.FilterSubject)
		}
		fs = append(fs, c.FilterSubjects...)
		filters = append(filters, fs...)
		consumers = append(consumers, consumer{name: cmp.Or(c.Durable, c.Name, info.Name), filters: fs})
	}
	if err := list.Err(); err != nil {
		d.log.Debug("gateway: consumers of the capture", "stream", d.stream, "err", err)
		return false
	}
	d.view.Store(&durableView{at: at, filters: filters, consumers: consumers})
	return true
}

// served reports whether a durable group's consumer covers subject, from
// a reading that started less than interval before received (a consumer
// created later than that may be missed: the documented staleness). known
// is false when there is no such reading yet; one is then started.
func (d *durables) served(subject string, received time.Time) (served, known bool) {
	v := d.view.Load()
	if v == nil || !v.at.After(received.Add(-d.interval)) {
		select {
		case d.kick <- struct{}{}:
		default:
		}
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

// latest returns the latest reading, nil before the first.
func (d *durables) latest() *durableView { return d.view.Load() }

// fresh returns a reading no older than interval, reading again if the
// latest is older (and waiting at most interval for it), or the latest
// if that fails.
func (d *durables) fresh(ctx context.Context) *durableView {
	if v := d.view.Load(); v != nil && time.Since(v.at) < d.interval {
		return v
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(d.interval)
	for time.Now().Before(deadline) {
		if v := d.view.Load(); v != nil && time.Since(v.at) < d.interval {
			return v
		}
		select {
		case <-ctx.Done():
			return d.view.Load()
		case <-t.C:
		}
	}
	return d.view.Load()
}
