package gateway

import (
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// maxShedFor bounds how long one Overload message sheds a group's
// requests: an instance that dies while overloaded stops shedding within
// it, whatever it asked.
const maxShedFor = 2 * time.Second

// admission sheds requests at the door for the durable groups that say
// they are overloaded (schemas.Overload, schemas/README.md "Shedding at
// the door"): it keeps each instance's latest Overload until it lapses,
// and answers ingress.Admission for every listener. A subject that an
// announced direct group (or a plain subscription) serves too is never
// shed: that group may answer in time. Safe for concurrent use.
type admission struct {
	prefix string
	grs    *groups
	log    *slog.Logger

	mu      sync.Mutex        // guards signals and timer
	signals map[string]signal // by group and instance
	timer   *time.Timer       // recomputes rules when the first signal lapses

	rules atomic.Pointer[[]shedRule] // nil when nothing is shed
}

// signal is one instance's latest Overload.
type signal struct {
	subjects []string
	until    time.Time
	retry    time.Duration
}

// shedRule sheds the requests on filter until until.
type shedRule struct {
	filter string
	until  time.Time
	retry  time.Duration
}

func newAdmission(prefix string, grs *groups, log *slog.Logger) *admission {
	return &admission{prefix: prefix, grs: grs, log: log, signals: map[string]signal{}}
}

// subscribe receives the Overload messages on nc until the returned
// function is called.
func (a *admission) subscribe(nc *nats.Conn) (func(), error) {
	sub, err := nc.Subscribe(schemas.OverloadSubject(a.prefix), func(m *nats.Msg) { a.receive(m.Data, time.Now()) })
	if err != nil {
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}

// receive takes one Overload message, received at now.
func (a *admission) receive(data []byte, now time.Time) {
	var o schemas.Overload
	if err := json.Unmarshal(data, &o); err != nil || o.Group == "" {
		a.log.Debug("gateway: a malformed overload message", "err", err)
		return
	}
	var subjects []string
	for _, s := range o.Subjects {
		if strings.HasPrefix(s, a.prefix+".in.") {
			subjects = append(subjects, s)
		}
	}
	key := o.Group + "\x00" + o.Instance
	a.mu.Lock()
	defer a.mu.Unlock()
	_, was := a.signals[key]
	if shedFor := min(o.ShedFor(), maxShedFor); shedFor > 0 && len(subjects) > 0 {
		a.signals[key] = signal{subjects: subjects, until: now.Add(shedFor), retry: o.RetryAfter()}
		if !was {
			a.log.Info("gateway: a durable group is overloaded: its new requests are shed at the door", "group", o.Group, "instance", o.Instance, "subjects", subjects)
		}
	} else if was {
		delete(a.signals, key)
		a.log.Info("gateway: a durable group is no longer overloaded", "group", o.Group, "instance", o.Instance)
	}
	a.recompute(now)
}

// recompute makes the rules from the signals that have not lapsed at now,
// and schedules the next recomputation for when the first lapses. a.mu
// must be held.
func (a *admission) recompute(now time.Time) {
	var rules []shedRule
	var first time.Time
	served := a.directSubjects()
	for key, s := range a.signals {
		if !now.Before(s.until) {
			delete(a.signals, key)
			continue
		}
		if first.IsZero() || s.until.Before(first) {
			first = s.until
		}
		for _, f := range s.subjects {
			if overlapsAny(f, served) {
				continue
			}
			rules = append(rules, shedRule{filter: f, until: s.until, retry: s.retry})
		}
	}
	if len(rules) == 0 {
		a.rules.Store(nil)
	} else {
		a.rules.Store(&rules)
	}
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if !first.IsZero() {
		a.timer = time.AfterFunc(first.Sub(now), func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.recompute(time.Now())
		})
	}
}

// directSubjects returns the subjects that announced direct groups and
// plain subscriptions serve.
func (a *admission) directSubjects() []string {
	if a.grs == nil {
		return nil
	}
	var subjects []string
	for _, g := range a.grs.current().groups {
		if g.Delivery != DeliveryDurable {
			subjects = append(subjects, g.Subjects...)
		}
	}
	return subjects
}

// overlapsAny reports whether some subject matches both f and one of
// subjects.
func overlapsAny(f string, subjects []string) bool {
	for _, s := range subjects {
		if schemas.Overlap(f, s) {
			return true
		}
	}
	return false
}

// Shedding implements ingress.Admission.
func (a *admission) Shedding() bool { return a.rules.Load() != nil }

// Shed implements ingress.Admission.
func (a *admission) Shed(subject string) (time.Duration, bool) {
	p := a.rules.Load()
	if p == nil {
		return 0, false
	}
	now := time.Now()
	for _, r := range *p {
		if now.Before(r.until) && schemas.Covers(r.filter, subject) {
			return r.retry, true
		}
	}
	return 0, false
}

// stop stops the recomputation timer.
func (a *admission) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer != nil {
		a.timer.Stop()
	}
}
