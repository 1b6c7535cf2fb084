package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Subscription is one core NATS subscription to a request subject: an
// instance of a direct group (a queue subscription) or a subscriber of its
// own.
type Subscription struct {
	Server  string // the id of the NATS server that holds it
	CID     uint64 // its connection's id on that server
	Conn    string // its connection's name, if it has one
	Subject string
	Queue   string // its queue group; empty outside any
	Msgs    int64  // messages NATS delivered to it
}

// SubscriptionLister lists the core NATS subscriptions whose subjects
// overlap filter (a subject with wildcards): those of the groups that
// announce nothing, which the gateway then lists too
// (Gateway.Subscriptions).
type SubscriptionLister func(ctx context.Context, filter string) ([]Subscription, error)

// maxConnections is the most connections one server lists in an answer.
const maxConnections = 4096

// EmbeddedSubscriptions lists the subscriptions of s, a NATS server in
// this process (`udpgate run`'s), from its own connection list.
func EmbeddedSubscriptions(s *server.Server) SubscriptionLister {
	return func(_ context.Context, filter string) ([]Subscription, error) {
		// Without an account filter the server reads its connections
		// under its own lock; filtered by account, it does not.
		cz, err := s.Connz(&server.ConnzOptions{SubscriptionsDetail: true, Limit: maxConnections})
		if err != nil {
			return nil, err
		}
		return connzSubscriptions(s.ID(), cz, filter), nil
	}
}

// connzSubjectAccount asks every server of the cluster for the connections
// of the asker's own account: a service of NATS's system account that
// every account imports, so it needs no system credentials (the asker
// needs permission to publish it).
const connzSubjectAccount = "$SYS.REQ.ACCOUNT.PING.CONNZ"

// ClusterSubscriptions lists the subscriptions of nc's account on every
// server of its cluster, each server answering NATS's CONNZ request
// about the asker's account; the list holds what answered before ctx
// ended (or stopped answering for pollQuiet). It fails when no server
// answers: a server without a system account, or a user not allowed to
// ask.
func ClusterSubscriptions(nc *nats.Conn) SubscriptionLister {
	return func(ctx context.Context, filter string) ([]Subscription, error) {
		ch := make(chan *nats.Msg, 64)
		inbox := nc.NewRespInbox()
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			return nil, err
		}
		defer sub.Unsubscribe()
		req, _ := json.Marshal(server.ConnzOptions{SubscriptionsDetail: true, FilterSubject: filter, Limit: maxConnections})
		if err := nc.PublishRequest(connzSubjectAccount, inbox, req); err != nil {
			return nil, err
		}
		window := pollWindow
		if d, ok := ctx.Deadline(); ok {
			window = time.Until(d)
		}
		var out []Subscription
		answered := false
		gather(ctx, ch, window, func(m *nats.Msg) {
			var a struct {
				Server struct {
					ID string `json:"id"`
				} `json:"server"`
				Data *server.Connz `json:"data"`
			}
			if json.Unmarshal(m.Data, &a) != nil || a.Data == nil || a.Server.ID == "" {
				return // no responders, or an error: nothing learned
			}
			answered = true
			out = append(out, connzSubscriptions(a.Server.ID, a.Data, filter)...)
		})
		if !answered {
			return nil, errors.New("no NATS server answered " + connzSubjectAccount + " (a server without a system account, or no permission to publish it)")
		}
		return out, nil
	}
}

// connzSubscriptions returns the subscriptions of a server's connection
// list whose subjects overlap filter.
func connzSubscriptions(serverID string, cz *server.Connz, filter string) []Subscription {
	var out []Subscription
	for _, c := range cz.Conns {
		for _, sd := range c.SubsDetail {
			if overlaps(sd.Subject, filter) {
				out = append(out, Subscription{
					Server: serverID, CID: c.Cid, Conn: c.Name, Subject: sd.Subject, Queue: sd.Queue, Msgs: sd.Msgs,
				})
			}
		}
	}
	return out
}
