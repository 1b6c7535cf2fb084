package gateway

import (
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// notifications subscribes a coap listener to its notify subjects,
// PREFIX.notify.PORT and PREFIX.notify.PORT.>, with plain subscriptions:
// every node with a coap listener on the port receives each
// notification, and sends it to the observers it holds (coap.Edge.Notify).
// A notification published as a NATS request is answered with the number
// of observers notified (schemas.HeaderCoAPObservers). With an Observe
// bucket, it makes the bucket the edge's coap.Registry, and reads back
// the registrations the node held on the port, which the edge restores
// when it starts (a coaps listener deletes them: their DTLS sessions are
// gone). The subscriptions end when the listener stops reading,
// or when the returned function is called, which also stops refreshing
// the port's registrations in the bucket. Other listeners subscribe to
// nothing.
func (lv *live) notifications() (stop func()) {
	in := lv.in
	if lv.Protocol != schemas.ProtocolCoAP || in.NATS == nil {
		return func() {}
	}
	if lv.obs != nil {
		in.CoAP.Registry = lv.obs
		regs, err := lv.obs.load(lv.ctx, lv.port)
		if err != nil {
			in.Log.Error("gateway: the observers registered before this start get no notifications until they register again", "listener", lv.name, "err", err)
		}
		if lv.DTLS != nil {
			// A coaps listener's observers had DTLS sessions, which ended
			// with the process that held them: nothing could reach them.
			// Their keys go; they register again in new sessions.
			for _, r := range regs {
				lv.obs.Deregister(r)
			}
			regs = nil
		}
		in.CoAP.Restore = regs
		if len(regs) > 0 {
			in.Log.Info("gateway: Observe registrations read back from the bucket", "listener", lv.name, "registrations", len(regs))
		}
	}
	base := schemas.NotifySubject(in.Prefix, lv.port, nil)
	handle := func(m *nats.Msg) {
		resource := ""
		if len(m.Subject) > len(base) {
			resource = m.Subject[len(base)+1:]
		}
		n := 0
		if e := in.CoAPEdge(); e != nil {
			var err error
			if n, err = e.Notify(resource, m.Header, m.Data); err != nil {
				in.Log.Debug("gateway: a notification with a bad header", "subject", m.Subject, "err", err)
			}
		}
		if m.Reply != "" {
			r := nats.NewMsg(m.Reply)
			r.Header.Set(schemas.HeaderCoAPObservers, strconv.Itoa(n))
			m.RespondMsg(r)
		}
	}
	var subs []*nats.Subscription
	for _, subject := range []string{base, schemas.NotifyWildcard(in.Prefix, lv.port)} {
		s, err := in.NATS.Subscribe(subject, handle)
		if err != nil {
			in.Log.Error("gateway: subscribe to CoAP notifications; observers of this listener get none", "subject", subject, "err", err)
			continue
		}
		subs = append(subs, s)
	}
	// A listener that stops reading stops notifying: after a hand-over
	// the process that took its socket has restored the observers and
	// notifies them, and two processes would send each notification
	// twice.
	var once sync.Once
	unsubscribe := func() {
		once.Do(func() {
			for _, s := range subs {
				s.Unsubscribe()
			}
		})
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-lv.stop:
			unsubscribe()
		case <-done:
		}
	})
	return func() {
		close(done)
		wg.Wait()
		unsubscribe()
		if lv.obs != nil {
			lv.obs.forgetPort(lv.port)
		}
	}
}
