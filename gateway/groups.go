package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/udpgate/udpgate/coap/linkformat"
	"github.com/udpgate/udpgate/schemas"
)

// DefaultDiscoveryInterval is how often the gateway asks the worker groups
// what they serve when Gateway.DiscoveryInterval is zero.
const DefaultDiscoveryInterval = 2 * time.Second

// Announcements a group instance no longer answers: after missedPolls
// polls in a row without its answer, it is gone. A poll waits at most
// pollWindow for answers, and stops pollQuiet after the latest.
const (
	missedPolls = 2
	pollWindow  = 500 * time.Millisecond
	pollQuiet   = 100 * time.Millisecond
)

// Metadata keys of a group's announcement (schemas/README.md, "Announcing
// a group"); the workers package sets them.
const (
	metadataDelivery  = "udpgate.delivery"
	metadataCoAPLinks = "udpgate.coap.links"
)

// Deliveries of a Group.
const (
	DeliveryDirect  = "direct"
	DeliveryDurable = "durable"
	// DeliverySubscriber is a plain subscription outside any queue group:
	// it receives every request on its subjects, as a group of its own.
	DeliverySubscriber = "subscriber"
)

// Group is a worker group as a gateway knows it: from the announcements of
// its instances (NATS's service discovery, $SRV.STATS) and, for a group
// that announces nothing, from NATS itself: the subscriptions of its
// direct instances (Gateway.Subscriptions) or the consumer of a durable
// one.
type Group struct {
	// Name is the group's: its service name, its queue group (direct) or
	// its consumer's name (durable); for a subscription outside any queue
	// group, its connection's name (or "connection CID").
	Name string `json:"name"`
	// Delivery is DeliveryDirect, DeliveryDurable or DeliverySubscriber;
	// empty when an announcement does not say.
	Delivery string `json:"delivery,omitempty"`
	// Announced is false for a group known only from NATS.
	Announced bool `json:"announced"`
	// Instances is how many instances answered discovery, or for a direct
	// group that does not announce, how many connections subscribe; 0 for
	// a durable group that does not announce.
	Instances int `json:"instances"`
	// Versions are the versions its instances announce, sorted.
	Versions []string `json:"versions,omitempty"`
	// Subjects are the subjects it serves (endpoint subjects, or consumer
	// filters), sorted.
	Subjects []string `json:"subjects"`
	// Resources are the CoAP resources it serves on the listener, in CoRE
	// Link Format, one link each (only in a ListenerStatus).
	Resources []string `json:"resources,omitempty"`
	// Requests and Errors are what its live instances count on Subjects
	// (for a group that does not announce, the messages NATS delivered to
	// its subscriptions); AverageProcessing is their mean handling time,
	// when announced.
	Requests          int           `json:"requests"`
	Errors            int           `json:"errors"`
	AverageProcessing time.Duration `json:"average_processing_ns"`

	links []linkformat.Link // announced CoAP resources, all ports
}

// instance is one group instance's latest announcement.
type instance struct {
	stats    micro.Stats
	links    []linkformat.Link
	lastSeen uint64 // the poll that last heard it
}

// groupsView is what one poll of discovery found: the live instances,
// grouped.
type groupsView struct {
	at     time.Time // when the poll started
	groups []Group   // sorted by name; announced groups only
}

// groups keeps what the worker groups announce, asking them every
// interval. Safe for concurrent use; run and poll are its one writer.
type groups struct {
	nc       *nats.Conn
	prefix   string
	interval time.Duration
	log      *slog.Logger

	subs SubscriptionLister // nil: subscriptions are not listed

	// Written by run's goroutine only.
	polls         uint64               // polls made
	instances     map[string]*instance // by instance id
	subscriptions []Subscription       // the latest list
	subsSeen      uint64               // the poll that listed them
	subsFailed    bool                 // the latest listing failed (logged once)
	view          atomic.Pointer[groupsView]
	pollCount     atomic.Uint64
	kick          chan struct{} // buffered: poll now
}

func newGroups(nc *nats.Conn, prefix string, interval time.Duration, subs SubscriptionLister, log *slog.Logger) *groups {
	if interval <= 0 {
		interval = DefaultDiscoveryInterval
	}
	return &groups{nc: nc, prefix: prefix, interval: interval, log: log, subs: subs, instances: map[string]*instance{}, kick: make(chan struct{}, 1)}
}

// run polls discovery at once, then every interval and when asked, until
// ctx ends.
func (g *groups) run(ctx context.Context) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		g.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.kick:
		}
	}
}

// discover asks for a poll now and waits until one that started after the
// call has ended, or ctx has.
func (g *groups) discover(ctx context.Context) error {
	asked := time.Now()
	select {
	case g.kick <- struct{}{}:
	default:
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if v := g.view.Load(); v != nil && !v.at.Before(asked) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// window is how long a poll waits for answers: pollWindow, or half the
// interval if that is shorter.
func (g *groups) window() time.Duration { return min(pollWindow, g.interval/2) }

// poll asks every service instance for its statistics ($SRV.STATS), and
// if it can, NATS for the subscriptions to request subjects
// (Gateway.Subscriptions); it keeps what concerns subjects under the
// prefix, and forgets the instances that missed missedPolls polls in a
// row, and subscriptions listed that long ago.
func (g *groups) poll(ctx context.Context) {
	at := time.Now()
	g.polls++
	in := schemas.InWildcard(g.prefix)
	g.gatherInstances(ctx, in)
	if g.subs != nil {
		lctx, cancel := context.WithTimeout(ctx, g.window())
		subs, err := g.subs(lctx, in)
		cancel()
		switch {
		case err == nil:
			g.subscriptions, g.subsSeen = subs, g.polls
		case !g.subsFailed:
			g.subsFailed = true
			g.log.Warn("gateway: discovery: cannot list the subscriptions to request subjects; groups that announce nothing are not listed", "err", err)
		}
		if err == nil {
			g.subsFailed = false
		}
		if g.polls-g.subsSeen >= missedPolls {
			g.subscriptions = nil
		}
	}
	if ctx.Err() != nil {
		return
	}
	for id, inst := range g.instances {
		if g.polls-inst.lastSeen >= missedPolls {
			delete(g.instances, id)
		}
	}
	g.view.Store(&groupsView{at: at, groups: groupInstances(g.instances, g.subscriptions)})
	g.pollCount.Add(1)
}

// gatherInstances asks every service instance for its statistics and
// keeps the answers that arrive within the poll's window.
func (g *groups) gatherInstances(ctx context.Context, in string) {
	ch := make(chan *nats.Msg, 1024)
	inbox := g.nc.NewRespInbox()
	sub, err := g.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		g.log.Debug("gateway: discovery", "err", err)
		return
	}
	defer sub.Unsubscribe()
	stats, _ := micro.ControlSubject(micro.StatsVerb, "", "")
	if err := g.nc.PublishRequest(stats, inbox, nil); err != nil {
		g.log.Debug("gateway: discovery", "err", err)
		return
	}
	gather(ctx, ch, g.window(), func(m *nats.Msg) { g.keepInstance(m.Data, in) })
}

// gather hands keep every message that arrives on ch within window, and
// stops early once none has come for pollQuiet after the latest.
func gather(ctx context.Context, ch <-chan *nats.Msg, window time.Duration, keep func(*nats.Msg)) {
	end := time.NewTimer(window)
	defer end.Stop()
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-end.C:
			return
		case <-quiet.C:
			return
		case m := <-ch:
			quiet.Reset(min(pollQuiet, window))
			keep(m)
		}
	}
}

// keepInstance keeps a service instance's answer to $SRV.STATS if it
// serves request subjects under the prefix (in is their wildcard).
func (g *groups) keepInstance(data []byte, in string) {
	var st micro.Stats
	if json.Unmarshal(data, &st) != nil || st.Type != micro.StatsResponseType || st.ID == "" {
		return
	}
	if !slices.ContainsFunc(st.Endpoints, func(e *micro.EndpointStats) bool {
		return e != nil && overlaps(e.Subject, in)
	}) {
		return // another service on the bus
	}
	inst := &instance{stats: st, lastSeen: g.polls}
	if l := st.Metadata[metadataCoAPLinks]; l != "" {
		inst.links = linkformat.Parse(l)
	}
	g.instances[st.ID] = inst
}

// groupInstances folds the instances into groups, and adds the groups of
// subscriptions that announce nothing, sorted by name: a queue group is a
// direct group of that name (an instance per connection), a subscription
// outside any queue group one of its own, named after its connection.
func groupInstances(instances map[string]*instance, subscriptions []Subscription) []Group {
	byName := map[string]*Group{}
	var processing = map[string]time.Duration{}
	for _, inst := range instances {
		st := inst.stats
		gr := byName[st.Name]
		if gr == nil {
			gr = &Group{Name: st.Name, Announced: true}
			byName[st.Name] = gr
		}
		gr.Instances++
		gr.Delivery = cmp.Or(gr.Delivery, st.Metadata[metadataDelivery])
		if st.Version != "" {
			gr.Versions = append(gr.Versions, st.Version)
		}
		for _, e := range st.Endpoints {
			if e == nil {
				continue
			}
			gr.Subjects = append(gr.Subjects, e.Subject)
			gr.Requests += e.NumRequests
			gr.Errors += e.NumErrors
			processing[st.Name] += e.ProcessingTime
		}
		gr.links = mergeLinks(gr.links, inst.links)
	}
	conns := map[string]map[string]bool{} // connections of each plain group
	for _, sub := range subscriptions {
		name, delivery := sub.Queue, DeliveryDirect
		if name == "" {
			name, delivery = cmp.Or(sub.Conn, "connection "+strconv.FormatUint(sub.CID, 10)), DeliverySubscriber
		}
		gr := byName[name]
		if gr != nil && gr.Announced {
			continue // it says more about itself
		}
		if gr == nil {
			gr = &Group{Name: name, Delivery: delivery}
			byName[name] = gr
			conns[name] = map[string]bool{}
		}
		conns[name][sub.Server+"/"+strconv.FormatUint(sub.CID, 10)] = true
		gr.Instances = len(conns[name])
		gr.Subjects = append(gr.Subjects, sub.Subject)
		gr.Requests += int(sub.Msgs)
	}
	out := make([]Group, 0, len(byName))
	for name, gr := range byName {
		slices.Sort(gr.Versions)
		gr.Versions = slices.Compact(gr.Versions)
		slices.Sort(gr.Subjects)
		gr.Subjects = slices.Compact(gr.Subjects)
		if gr.Requests > 0 && processing[name] > 0 {
			gr.AverageProcessing = processing[name] / time.Duration(gr.Requests)
		}
		out = append(out, *gr)
	}
	slices.SortFunc(out, func(a, b Group) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// mergeLinks adds to links those of more whose paths it lacks.
func mergeLinks(links, more []linkformat.Link) []linkformat.Link {
	for _, l := range more {
		if !slices.ContainsFunc(links, func(k linkformat.Link) bool { return k.Path == l.Path }) {
			links = append(links, l)
		}
	}
	return links
}

// current returns the latest view; an empty one before the first poll.
func (g *groups) current() *groupsView {
	if v := g.view.Load(); v != nil {
		return v
	}
	return &groupsView{}
}

// coapMethods are the methods a CoAP request subject may carry.
var coapMethods = []string{"GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"}

// resources returns the CoAP resources that groups serve on port, sorted
// by path: each announced link whose path one of its group's subjects on
// port covers (for some method), and the path alone of each subject
// without wildcards that no link names. filters are the subjects of the
// durable groups that do not announce, listed by path alone too.
func resources(prefix string, port uint16, groups []Group, filters []string) []linkformat.Link {
	var out []linkformat.Link
	for _, gr := range groups {
		for _, l := range gr.links {
			if l.Path == WellKnownCore {
				continue
			}
			segs, ok := pathSegments(l.Path)
			if ok && slices.ContainsFunc(gr.Subjects, func(s string) bool { return coversPath(s, prefix, port, segs) }) {
				out = mergeLinks(out, []linkformat.Link{l})
			}
		}
	}
	for _, gr := range groups {
		for _, s := range gr.Subjects {
			if p, ok := concretePath(s, prefix, port); ok {
				out = mergeLinks(out, []linkformat.Link{{Path: p}})
			}
		}
	}
	for _, s := range filters {
		if p, ok := concretePath(s, prefix, port); ok {
			out = mergeLinks(out, []linkformat.Link{{Path: p}})
		}
	}
	slices.SortFunc(out, func(a, b linkformat.Link) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// WellKnownCore is the path of CoAP resource discovery (RFC 6690), which
// the gateway answers for the groups of a port unless one serves it.
const WellKnownCore = "/.well-known/core"

// pathSegments returns the Uri-Path segments of a percent-encoded path.
func pathSegments(path string) ([]string, bool) {
	p, ok := strings.CutPrefix(path, "/")
	if !ok {
		return nil, false
	}
	if p == "" {
		return nil, true
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, false
		}
		segs[i] = u
	}
	return segs, true
}

// coversPath reports whether the subject filter s matches a CoAP request
// for the path segs on port, for some method.
func coversPath(s, prefix string, port uint16, segs []string) bool {
	for _, m := range coapMethods {
		if schemas.Match(s, schemas.CoAPSubject(prefix, port, m, segs)) {
			return true
		}
	}
	return false
}

// concretePath returns the percent-encoded path of a CoAP request subject
// filter on port that names one path (its tokens after the method hold no
// wildcard); ok is false for another.
func concretePath(s, prefix string, port uint16) (string, bool) {
	rest, ok := strings.CutPrefix(s, schemas.InSubject(prefix, port)+".")
	if !ok {
		return "", false
	}
	toks := strings.Split(rest, ".")
	if toks[0] == ">" {
		return "", false
	}
	var b strings.Builder
	for _, t := range toks[1:] {
		seg, ok := schemas.UnescapeToken(t)
		if !ok || t == "*" || t == ">" {
			return "", false
		}
		b.WriteByte('/')
		b.WriteString(url.PathEscape(seg))
	}
	if b.Len() == 0 {
		return "/", true
	}
	if b.String() == WellKnownCore {
		return "", false
	}
	return b.String(), true
}

// overlaps reports whether some subject matches both subject filters a
// and b.
func overlaps(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) || i == len(bt):
			return len(at) == len(bt)
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] != bt[i] && at[i] != "*" && bt[i] != "*":
			return false
		}
	}
}
