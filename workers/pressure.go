package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// Shedding at the door (schemas.Overload). A durable group's requests wait
// in the stream, oldest first; under a sustained overload each one waits
// until it can no longer finish, and is shed only when a handler reaches
// it: its client hears of the overload seconds after it asked. So each
// Durable instance watches how long its requests waited, and when they
// wait too long tells every gateway to shed the group's new requests at
// once, until the requests it holds are worked off.
const (
	// pressureTick is how often an instance judges its requests' waits.
	pressureTick = 25 * time.Millisecond
	// pressureRefresh is how often an overloaded instance repeats its
	// Overload message; pressureShedFor is how long each one sheds, long
	// enough that one lost message costs nothing.
	pressureRefresh = 100 * time.Millisecond
	pressureShedFor = 300 * time.Millisecond
	// pressureWaited is the share of its slack (its time to the deadline
	// less the handler estimate, as it arrived) that a request may wait
	// before the instance calls itself overloaded: the requests admitted
	// until the gateways hear of it still have the rest.
	pressureWaited = 0.5
)

// pressure judges whether a Durable instance's requests wait too long, from
// the requests its handlers take, and tells the gateways. It is safe for
// concurrent use.
type pressure struct {
	mu      sync.Mutex // guards minWait and n
	minWait float64    // the least share of its slack a request waited, this tick
	n       int        // requests taken this tick

	busy atomic.Int64 // handlers running
}

func newPressure() *pressure { return &pressure{minWait: math.Inf(1)} }

// took records a request taken at now by a handler: received when the
// gateway read it, deadline its deadline, est the handler estimate.
// Requests without a deadline or a receipt time do not count.
func (p *pressure) took(received, deadline, now time.Time, est time.Duration) {
	if received.IsZero() || deadline.IsZero() {
		return
	}
	waited := now.Sub(received)
	share := math.Inf(1)
	if slack := deadline.Sub(received) - est; slack > 0 {
		share = float64(waited) / float64(slack)
	}
	p.mu.Lock()
	p.minWait = min(p.minWait, share)
	p.n++
	p.mu.Unlock()
}

// judge returns whether the instance is overloaded now, given whether it
// was: the requests taken since the last judgement all waited too long;
// or none was taken while every handler was busy and it was overloaded
// before. It starts the next tick.
func (p *pressure) judge(was bool, concurrency int) bool {
	p.mu.Lock()
	minWait, n := p.minWait, p.n
	p.minWait, p.n = math.Inf(1), 0
	p.mu.Unlock()
	switch {
	case n > 0:
		return minWait > pressureWaited
	case p.busy.Load() >= int64(concurrency):
		return was
	}
	return false
}

// watch judges the pressure every pressureTick until ctx ends, and
// publishes the group's Overload messages to the gateways: while
// overloaded, every pressureRefresh; at its end, one that stops the
// shedding at once.
func (r *run) watch(ctx context.Context, p *pressure, concurrency int) {
	prefix := cmp.Or(r.Prefix, schemas.DefaultPrefix)
	subject := schemas.OverloadSubject(prefix)
	instance := strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix)
	var subjects []string
	for _, s := range r.Subjects {
		if strings.HasPrefix(s, prefix+".in.") {
			subjects = append(subjects, s)
		}
	}
	if len(subjects) == 0 {
		return
	}
	send := func(shedFor, retry time.Duration) {
		b, _ := json.Marshal(schemas.Overload{
			Group: r.Group, Instance: instance, Subjects: subjects,
			ShedMillis: shedFor.Milliseconds(), RetryMillis: retry.Milliseconds(),
		})
		if err := r.nc.Publish(subject, b); err != nil {
			r.log.Debug("workers: publish overload", "err", err)
		}
	}
	t := time.NewTicker(pressureTick)
	defer t.Stop()
	on := false
	var sent time.Time
	for {
		select {
		case <-ctx.Done():
			if on {
				send(0, 0)
			}
			return
		case now := <-t.C:
			was := on
			on = p.judge(was, concurrency)
			switch {
			case on && (!was || now.Sub(sent) >= pressureRefresh):
				if !was {
					r.stats.overloads.Add(1)
					r.log.Info("workers: overloaded: the gateways shed new requests at the door")
				}
				send(pressureShedFor, r.estimate())
				sent = now
			case was && !on:
				send(0, 0)
				r.log.Info("workers: no longer overloaded")
			}
		}
	}
}
