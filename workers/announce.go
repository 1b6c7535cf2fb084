package workers

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/udpgate/udpgate/schemas"
)

// Metadata keys of a group's announcement (schemas/README.md, "Announcing
// a group").
const (
	// MetadataDelivery is the group's delivery: "direct" or "durable".
	MetadataDelivery = "udpgate.delivery"
	// MetadataCoAPLinks lists, in CoRE Link Format (RFC 6690), the CoAP
	// resources the group serves with their attributes, as its
	// /.well-known/core would: the Go SDK sets it from a Mux handler.
	MetadataCoAPLinks = "udpgate.coap.links"
)

// DefaultVersion is the version a group announces when Server.Version is
// empty.
const DefaultVersion = "0.0.0"

// serviceName is what NATS's service framework accepts as a name.
var serviceName = regexp.MustCompile(`^[A-Za-z0-9\-_]+$`)

// announcer answers NATS's service discovery for one instance of a group,
// as a nats micro service does: PING, INFO and STATS on $SRV.VERB,
// $SRV.VERB.GROUP and $SRV.VERB.GROUP.ID, one endpoint per subject of the
// group (queue group = the group for a direct one). It is separate from
// the subscriptions that receive requests, whose delivery it leaves alone.
// Safe for concurrent use.
type announcer struct {
	identity   micro.ServiceIdentity
	mux        *Mux // the group's handler, if a Mux: its links are announced
	started    time.Time
	queueGroup string
	subjects   []string

	mu    sync.Mutex // guards stats
	stats []endpointStats
}

// endpointStats counts the requests of one subject.
type endpointStats struct {
	requests, errors int
	lastError        string
	time             time.Duration
}

// announce starts answering discovery requests on nc for s, and returns
// the announcer and a function that stops it. It announces nothing (nil,
// a no-op) when s is Silent or its group is not a valid service name.
func (s *Server) announce(nc *nats.Conn, log *slog.Logger) (*announcer, func(), error) {
	if s.Silent {
		return nil, func() {}, nil
	}
	if !serviceName.MatchString(s.Group) {
		log.Debug("workers: group not announced: NATS service names are letters, digits, - and _", "group", s.Group)
		return nil, func() {}, nil
	}
	mux, _ := s.Handler.(*Mux)
	version := s.Version
	if version == "" {
		version = DefaultVersion
	}
	a := &announcer{
		identity: micro.ServiceIdentity{
			Name: s.Group, ID: rand.Text(), Version: version,
			Metadata: map[string]string{MetadataDelivery: s.Delivery.String()},
		},
		started:  time.Now().UTC(),
		mux:      mux,
		subjects: s.Subjects,
		stats:    make([]endpointStats, len(s.Subjects)),
	}
	if s.Delivery == Direct {
		a.queueGroup = s.Group
	}
	var subs []*nats.Subscription
	stop := func() {
		for _, sub := range subs {
			sub.Unsubscribe()
		}
	}
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		answer := a.answer(verb)
		for _, ids := range [][2]string{{"", ""}, {s.Group, ""}, {s.Group, a.identity.ID}} {
			subject, err := micro.ControlSubject(verb, ids[0], ids[1])
			if err == nil {
				var sub *nats.Subscription
				sub, err = nc.Subscribe(subject, func(m *nats.Msg) {
					if b, err := json.Marshal(answer()); err == nil {
						m.Respond(b)
					}
				})
				subs = append(subs, sub)
			}
			if err != nil {
				stop()
				return nil, nil, fmt.Errorf("workers: %s: announce: %w", s.Group, err)
			}
		}
	}
	// Once the server has the subscriptions, discovery finds the instance.
	if err := nc.Flush(); err != nil {
		stop()
		return nil, nil, fmt.Errorf("workers: %s: announce: %w", s.Group, err)
	}
	return a, stop, nil
}

// answer returns the function that builds the answer to verb.
func (a *announcer) answer(verb micro.Verb) func() any {
	switch verb {
	case micro.PingVerb:
		return func() any { return micro.Ping{ServiceIdentity: a.identityNow(), Type: micro.PingResponseType} }
	case micro.InfoVerb:
		return func() any { return a.info() }
	default:
		return func() any { return a.statsNow() }
	}
}

// endpointName names the endpoint of the i-th subject.
func endpointName(i int) string { return "subject-" + strconv.Itoa(i) }

// identityNow returns the instance's identity, with the links of its Mux
// as they are now (routes may be added while it serves).
func (a *announcer) identityNow() micro.ServiceIdentity {
	id := a.identity
	if a.mux != nil {
		id.Metadata = maps.Clone(id.Metadata)
		if links := a.mux.linkFormat(); links != "" {
			id.Metadata[MetadataCoAPLinks] = links
		}
	}
	return id
}

func (a *announcer) info() micro.Info {
	info := micro.Info{
		ServiceIdentity: a.identityNow(),
		Type:            micro.InfoResponseType,
		Description:     "udpgate worker group",
		Endpoints:       make([]micro.EndpointInfo, len(a.subjects)),
	}
	for i, subject := range a.subjects {
		info.Endpoints[i] = micro.EndpointInfo{Name: endpointName(i), Subject: subject, QueueGroup: a.queueGroup, Metadata: map[string]string{}}
	}
	return info
}

func (a *announcer) statsNow() micro.Stats {
	st := micro.Stats{
		ServiceIdentity: a.identityNow(),
		Type:            micro.StatsResponseType,
		Started:         a.started,
		Endpoints:       make([]*micro.EndpointStats, len(a.subjects)),
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, subject := range a.subjects {
		e := a.stats[i]
		st.Endpoints[i] = &micro.EndpointStats{
			Name: endpointName(i), Subject: subject, QueueGroup: a.queueGroup,
			NumRequests: e.requests, NumErrors: e.errors, LastError: e.lastError, ProcessingTime: e.time,
		}
		if e.requests > 0 {
			st.Endpoints[i].AverageProcessingTime = e.time / time.Duration(e.requests)
		}
	}
	return st
}

// record counts a handled request on subject in the first endpoint whose
// subject matches it. a may be nil.
func (a *announcer) record(subject string, d time.Duration, err error) {
	if a == nil {
		return
	}
	for i, s := range a.subjects {
		if !schemas.Match(s, subject) {
			continue
		}
		a.mu.Lock()
		e := &a.stats[i]
		e.requests++
		e.time += d
		if err != nil {
			e.errors++
			e.lastError = "handler error" // error texts never cross NATS
		}
		a.mu.Unlock()
		return
	}
}
