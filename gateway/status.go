package gateway

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/coap/linkformat"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
)

// Status is who serves what on a gateway node: GET /v1/status and
// `udpgate status` show it.
type Status struct {
	Node   string `json:"node"`
	Prefix string `json:"prefix"`
	// DiscoveredAt is when the groups were last asked what they serve
	// (zero before the first time), and DiscoveryInterval how often they
	// are: an instance that stops is forgotten after two intervals
	// without its answer.
	DiscoveredAt      time.Time        `json:"discovered_at"`
	DiscoveryInterval string           `json:"discovery_interval"`
	Listeners         []ListenerStatus `json:"listeners"`
	// Groups are every group the node knows of, those that serve none of
	// its listeners included.
	Groups []Group `json:"groups"`
	// ObserveBucket is the JetStream key-value bucket of the CoAP Observe
	// registrations (empty: the node keeps them in memory only), and
	// Observed the resources it lists with registrations, of every node
	// that shares it.
	ObserveBucket string             `json:"observe_bucket,omitempty"`
	Observed      []ObservedResource `json:"observed,omitempty"`
}

// ListenerStatus is one listener and the groups that serve it.
type ListenerStatus struct {
	Listener string `json:"listener"` // PORT/PROTOCOL
	Address  string `json:"address"`
	// Origin is where the listener comes from: empty for the
	// configuration at start, "file" for the listener file, "lease ID"
	// for a leased listener (gateway.Listener.Origin).
	Origin  string `json:"origin,omitempty"`
	Subject string `json:"subject"` // its request subject, PREFIX.in.PORT
	// DTLS says the listener's datagrams come in DTLS sessions: a coaps
	// listener (PORT/coap) or a dtls one (PORT/raw).
	DTLS bool `json:"dtls,omitempty"`
	// Groups serve some of the listener's subjects, with only their
	// subjects, resources and figures on this port.
	Groups []Group `json:"groups"`
	// Received is how many datagrams the listener read; Answered how many
	// replies were sent for workers; NoResponders how many requests no
	// direct group received; Unserved and NoWorker how many no group
	// served (CoAP and RPC answered at once, raw released unanswered);
	// NoAnswer how many reached their deadline unanswered, and
	// CaptureDiscarded how many of those the capture stream's limits had
	// removed before a worker took them (Stats.CaptureDiscarded).
	// Shed is how many the gateway shed at the door for an overloaded
	// durable group (ingress.Stats.Shed).
	Received         uint64 `json:"received"`
	Answered         uint64 `json:"answered"`
	NoResponders     uint64 `json:"no_responders"`
	Unserved         uint64 `json:"unserved"`
	NoWorker         uint64 `json:"no_worker"`
	NoAnswer         uint64 `json:"no_answer"`
	CaptureDiscarded uint64 `json:"capture_discarded"`
	Shed             uint64 `json:"shed"`
	// Discovery is how many CoAP resource discovery requests the gateway
	// answered for the listener's groups.
	Discovery uint64 `json:"discovery"`
}

// Groups returns the groups the node knows of, sorted by name: those that
// announce themselves, as the latest discovery found them, and the durable
// groups that do not, from the latest reading of the capture stream's
// consumers. Nil before Serve.
func (g *Gateway) Groups() []Group {
	g.mu.Lock()
	grs, durs := g.groups, g.durables
	g.mu.Unlock()
	if grs == nil {
		return nil
	}
	return allGroups(grs.current(), durs.latest())
}

// Discover asks the worker groups what they serve now, rather than at the
// next DiscoveryInterval, and returns once they have answered (or ctx
// ends): call it after starting groups whose resources must be listed at
// once. It fails before Serve.
func (g *Gateway) Discover(ctx context.Context) error {
	g.mu.Lock()
	grs := g.groups
	g.mu.Unlock()
	if grs == nil {
		return errors.New("gateway: Discover before Serve")
	}
	return grs.discover(ctx)
}

// allGroups adds to the announced groups the durable groups known only
// from their consumers.
func allGroups(v *groupsView, d *durableView) []Group {
	out := slices.Clone(v.groups)
	if d != nil {
		for _, c := range d.consumers {
			if slices.ContainsFunc(out, func(gr Group) bool { return gr.Name == c.name }) {
				continue
			}
			out = append(out, Group{Name: c.name, Delivery: DeliveryDurable, Subjects: slices.Sorted(slices.Values(c.filters))})
		}
	}
	slices.SortFunc(out, func(a, b Group) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Status returns who serves what on the node. It reads the durable groups
// again if the latest reading is older than ServedInterval.
func (g *Gateway) Status(ctx context.Context) Status {
	g.mu.Lock()
	grs, durs, lives, eg, dis, obs := g.groups, g.durables, slices.Clone(g.lives), g.egress, g.discards, g.observe
	g.mu.Unlock()
	st := Status{Node: g.Node, Prefix: g.Prefix}
	if grs == nil {
		return st
	}
	if obs != nil {
		st.ObserveBucket = obs.bucket
		observed, err := obs.observed(ctx)
		if err != nil {
			g.Log.Warn("gateway: status: the observed resources are left out", "err", err)
		}
		st.Observed = observed
	}
	st.DiscoveryInterval = grs.interval.String()
	v := grs.current()
	st.DiscoveredAt = v.at
	d := durs.fresh(ctx)
	st.Groups = allGroups(v, d)
	byPort := eg.PortStats()
	for _, lv := range lives {
		port := lv.port
		es, in := byPort[port], lv.in.Stats()
		ls := ListenerStatus{
			Listener: lv.name, Address: lv.address(), Origin: lv.Origin, Subject: schemas.InSubject(g.Prefix, port),
			Received: in.Received, Answered: es.Sent, NoResponders: es.NoResponders, Shed: in.Shed,
			Unserved: es.Unserved, NoWorker: es.NoWorker, NoAnswer: es.NoAnswer, Discovery: es.Discovery,
			CaptureDiscarded: dis.count(port), DTLS: lv.DTLS != nil,
		}
		for _, gr := range st.Groups {
			if pg, ok := onPort(gr, g.Prefix, port, lv.name); ok {
				ls.Groups = append(ls.Groups, pg)
			}
		}
		st.Listeners = append(st.Listeners, ls)
	}
	for i := range st.Groups {
		st.Groups[i].Resources = nil
	}
	return st
}

// onPort returns gr as it serves the listener on port: only its subjects
// there, and its CoAP resources there; ok is false if it serves none.
func onPort(gr Group, prefix string, port uint16, listener string) (Group, bool) {
	in := schemas.InSubject(prefix, port)
	var subjects []string
	for _, s := range gr.Subjects {
		if overlaps(s, in) || overlaps(s, in+".>") {
			subjects = append(subjects, s)
		}
	}
	if len(subjects) == 0 {
		return Group{}, false
	}
	gr.Subjects = subjects
	if _, protocol, _ := schemas.ParseListener(listener); protocol == schemas.ProtocolCoAP {
		var filters []string
		if !gr.Announced {
			filters = subjects
		}
		for _, l := range resources(prefix, port, []Group{gr}, filters) {
			gr.Resources = append(gr.Resources, linkformat.Format([]linkformat.Link{l}))
		}
	}
	return gr, true
}

// unserved answers a CoAP or RPC request that no group serves (see
// egress.Server.Unserved): GET /.well-known/core with the resources every
// group has on the port, 4.05 for a path groups serve with other methods,
// else 4.04 or STATUS_UNIMPLEMENTED.
func unserved(prefix string, grs *groups, durs *durables) func(exchange.Exchange, string) (bool, func()) {
	return func(ex exchange.Exchange, subject string) (bool, func()) {
		fail := func() { ex.Replier.Fail(exchange.Unserved) }
		reply := func(header map[string][]string, body []byte) func() {
			return func() { ex.Replier.Reply(schemas.StatusOK, header, body) }
		}
		r, ok := ex.Replier.(*coap.Request)
		if !ok {
			return false, fail
		}
		var filters []string
		if d := durs.latest(); d != nil {
			filters = d.filters
		}
		groups := grs.current().groups
		notAllowed := map[string][]string{schemas.HeaderCoAPCode: {coapMethodNotAllowed}}
		if r.Path == WellKnownCore {
			if r.Method != "GET" {
				return false, reply(notAllowed, nil)
			}
			links := resources(prefix, ex.Port, groups, filters)
			name, want, _ := linkformat.Query(r.QueryOptions())
			links = linkformat.Filter(links, name, want)
			if len(links) == 0 {
				return true, fail // RFC 6690: nothing matches the filter
			}
			return true, reply(map[string][]string{
				schemas.HeaderCoAPContentFormat: {strconv.Itoa(contentFormatLinkFormat)},
			}, linkformat.Append(nil, links))
		}
		if servedOtherwise(prefix, ex.Port, r.Method, r.Segments, groups, filters) {
			return false, reply(notAllowed, nil)
		}
		return false, fail
	}
}

const (
	coapMethodNotAllowed    = "4.05"
	contentFormatLinkFormat = 40 // application/link-format
)

// servedOtherwise reports whether a group serves the path segs on port
// with another method than method: an announced subject or a durable
// group's filter matches the request subject of another method.
func servedOtherwise(prefix string, port uint16, method string, segs []string, groups []Group, filters []string) bool {
	for _, m := range coapMethods {
		if m == method {
			continue
		}
		subject := schemas.CoAPSubject(prefix, port, m, segs)
		match := func(f string) bool { return schemas.Match(f, subject) }
		if slices.ContainsFunc(filters, match) {
			return true
		}
		for _, gr := range groups {
			if slices.ContainsFunc(gr.Subjects, match) {
				return true
			}
		}
	}
	return false
}
