package workers_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestDirectGroupShares runs a Direct group of three instances, each on
// its own connection: each instance gets some of the requests, and every
// request is answered exactly once.
func TestDirectGroupShares(t *testing.T) {
	e := newEnv(t)
	const (
		instances = 3
		requests  = 60
	)
	var mu sync.Mutex // guards calls
	calls := map[string]int{}
	servers := make([]*workers.Server, instances)
	for i := range servers {
		servers[i] = &workers.Server{
			NATS: e.conn(t), Group: "g", Subjects: []string{subject},
			Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
				mu.Lock()
				calls[r.ID]++
				mu.Unlock()
				_, err := fmt.Fprint(w, i)
				return err
			}),
		}
		start(t, servers[i])
	}
	for i := range requests {
		e.send(t, fmt.Sprint(i), "")
	}
	answered := map[string]string{} // by id, the instance that answered
	for range requests {
		m := e.next(t)
		if by, dup := answered[replyID(m)]; dup {
			t.Errorf("request %s answered twice, by %s and %s", replyID(m), by, m.Data)
		}
		answered[replyID(m)] = string(m.Data)
	}
	// The counters are updated just after the replies are sent.
	poll(t, "every reply counted", func() bool {
		var replied uint64
		for _, s := range servers {
			replied += s.Stats().Replied
		}
		return replied == requests
	})
	for i, s := range servers {
		if s.Stats().Replied == 0 {
			t.Errorf("instance %d answered nothing: the group does not share work", i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range requests {
		id := fmt.Sprint(i)
		if calls[id] != 1 || answered[id] == "" {
			t.Errorf("request %s: handled %d times, answered by %q; want once", id, calls[id], answered[id])
		}
	}
}

// TestDirectFanOut runs three groups on one subject, two Direct and one
// Durable: each sees every request. One Direct group answers, the others
// observe (they never write), so each request gets exactly one reply.
func TestDirectFanOut(t *testing.T) {
	e := newEnv(t)
	const requests = 20
	type group struct {
		name     string
		delivery workers.Delivery
		answers  bool
	}
	groups := []group{{"answer", workers.Direct, true}, {"observe", workers.Direct, false}, {"archive", workers.Durable, false}}
	var mu sync.Mutex // guards seen
	seen := map[string][]string{}
	all := make(chan struct{}, len(groups)*requests)
	var answering []*workers.Server
	for _, g := range groups {
		for range 2 {
			s := &workers.Server{
				NATS: e.conn(t), Delivery: g.delivery, Group: g.name, Subjects: []string{subject},
				Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
					mu.Lock()
					seen[g.name] = append(seen[g.name], r.ID)
					mu.Unlock()
					all <- struct{}{}
					if !g.answers {
						return nil
					}
					_, err := w.Write([]byte(g.name))
					return err
				}),
			}
			start(t, s)
			if g.answers {
				answering = append(answering, s)
			}
		}
	}
	var want []string
	for i := range requests {
		id := fmt.Sprint(i)
		want = append(want, id)
		e.send(t, id, "")
	}
	for range len(groups) * requests {
		select {
		case <-all:
		case <-time.After(waitFor):
			t.Fatal("requests not all handled")
		}
	}
	var got []string
	for range requests {
		m := e.next(t)
		if string(m.Data) != "answer" {
			t.Errorf("reply %q from group %q, want one from group answer", replyID(m), m.Data)
		}
		got = append(got, replyID(m))
	}
	e.waitSettled(t, "archive")
	poll(t, "every reply counted", func() bool {
		return answering[0].Stats().Replied+answering[1].Stats().Replied == requests
	})
	select {
	case m := <-e.replies:
		if !noResponders(m) {
			t.Errorf("a second reply to %s, from %q", replyID(m), m.Data)
		}
	default:
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("replies to %q, want %q", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, g := range groups {
		ids := slices.Sorted(slices.Values(seen[g.name]))
		if !slices.Equal(ids, want) {
			t.Errorf("group %s handled %q, want every request once: %q", g.name, ids, want)
		}
	}
}

// TestDirectBacklogFull runs an instance whose one handler blocks, with
// a backlog of two: of nine more requests it drops the seven oldest, which
// being raw get no reply, and answers the others once the handler is free.
func TestDirectBacklogFull(t *testing.T) {
	e := newEnv(t)
	const requests = 10
	started := make(chan struct{}, requests)
	release := make(chan struct{})
	s := &workers.Server{
		NATS: e.conn(t), Group: "g", Subjects: []string{subject}, Concurrency: 1, Backlog: 2,
		Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
			started <- struct{}{}
			<-release
			_, err := w.Write(r.Body)
			return err
		}),
	}
	stop := start(t, s)
	e.send(t, "0", "")
	<-started
	for i := 1; i < requests; i++ {
		e.send(t, fmt.Sprint(i), "")
	}
	poll(t, "requests dropped", func() bool { return s.Stats().Dropped == requests-3 })
	close(release)
	var got []string
	for range 3 {
		got = append(got, replyID(e.next(t)))
	}
	if slices.Sort(got); !slices.Equal(got, []string{"0", "8", "9"}) {
		t.Errorf("replies to %q, want to 0 (handled first) and 8 and 9 (the newest)", got)
	}
	waitStats(t, s, workers.Stats{Handled: 3, Replied: 3, Dropped: requests - 3})
	if err := stop(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	select {
	case m := <-e.replies:
		t.Errorf("reply to %s: a dropped raw request has none", replyID(m))
	default:
	}
}

// TestDirectGracefulStop stops an instance that holds requests, one in its
// handler and two waiting for it, while another instance of its group
// runs: it answers what it holds, and new requests go to the other at once.
func TestDirectGracefulStop(t *testing.T) {
	e := newEnv(t)
	ncA := e.conn(t)
	startedA := make(chan struct{}, 3)
	releaseA := make(chan struct{})
	a := &workers.Server{
		NATS: ncA, Group: "g", Subjects: []string{subject}, Concurrency: 1,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			startedA <- struct{}{}
			<-releaseA
			// Stopping the instance does not cancel its handlers.
			if ctx.Err() != nil {
				return ctx.Err()
			}
			_, err := w.Write([]byte("a"))
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	waitReady(t, a)

	// A is the only instance: it gets the three requests. A message on
	// another of its subscriptions, published after them, reaches it after
	// them: then it holds them all.
	marker, err := ncA.SubscribeSync("marker")
	if err != nil {
		t.Fatal(err)
	}
	if err := ncA.Flush(); err != nil {
		t.Fatal(err)
	}
	held := []string{"held-0", "held-1", "held-2"}
	for _, id := range held {
		e.send(t, id, "")
	}
	if err := e.nc.Publish("marker", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := marker.NextMsg(waitFor); err != nil {
		t.Fatalf("marker: %v", err)
	}
	<-startedA

	b := &workers.Server{NATS: e.conn(t), Group: "g", Subjects: []string{subject}, Handler: reply("b")}
	start(t, b)
	cancel()
	cid, err := ncA.GetClientID()
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "A unsubscribed", func() bool {
		connz, err := e.srv.Connz(&server.ConnzOptions{CID: cid, Subscriptions: true})
		return err == nil && len(connz.Conns) == 1 && !slices.Contains(connz.Conns[0].Subs, subject)
	})
	const later = 10
	for i := range later {
		e.send(t, fmt.Sprint("new-", i), "")
	}
	for range later {
		if m := e.next(t); string(m.Data) != "b" || slices.Contains(held, replyID(m)) {
			t.Errorf("reply to %s from %q, want every new request answered by b", replyID(m), m.Data)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v while its handler runs", err)
	default:
	}

	close(releaseA)
	var got []string
	for range held {
		m := e.next(t)
		if string(m.Data) != "a" {
			t.Errorf("reply to %s from %q, want a", replyID(m), m.Data)
		}
		got = append(got, replyID(m))
	}
	if slices.Sort(got); !slices.Equal(got, held) {
		t.Errorf("a answered %q, want %q", got, held)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Serve did not return")
	}
	if got, want := a.Stats(), (workers.Stats{Handled: 3, Replied: 3}); got != want {
		t.Errorf("a's Stats = %+v, want %+v", got, want)
	}
	waitStats(t, b, workers.Stats{Handled: later, Replied: later})
}

// TestDirectReady publishes a request as soon as Ready is closed, from
// another connection, many times: it always reaches the instance (a
// request that no subscription receives fails at once with no
// responders).
func TestDirectReady(t *testing.T) {
	e := newEnv(t)
	for i := range 20 {
		s := &workers.Server{NATS: e.conn(t), Group: fmt.Sprint("g", i), Subjects: []string{subject}, Handler: reply("here")}
		stop := start(t, s)
		m, err := e.nc.RequestMsg(e.request(subject, "ignored", nil, time.Time{}), waitFor)
		if err != nil || string(m.Data) != "here" {
			t.Fatalf("request %d right after Ready: %v, %v", i, m, err)
		}
		if err := stop(); err != nil {
			t.Fatalf("Serve = %v", err)
		}
	}
}

// TestDirectPlainSubscriber: a plain NATS queue subscription, answering
// with msg.Respond and no udpgate library, is an instance of a Direct
// group like any other: it and an SDK instance share the requests, and
// the gateway gets the replies to the same subjects.
func TestDirectPlainSubscriber(t *testing.T) {
	e := newEnv(t)
	const requests = 40
	sdk := &workers.Server{NATS: e.conn(t), Group: "mixed", Subjects: []string{subject}, Handler: reply("sdk")}
	start(t, sdk)
	plainNC := e.conn(t)
	bad := make(chan string, requests)
	sub, err := plainNC.QueueSubscribe(subject, "mixed", func(m *nats.Msg) {
		if id, want := m.Header.Get(schemas.HeaderID), e.reply+"."+m.Header.Get(schemas.HeaderID); m.Reply != want {
			bad <- fmt.Sprintf("request %s has reply subject %q, want %q", id, m.Reply, want)
		}
		if err := m.Respond([]byte("plain")); err != nil {
			bad <- err.Error()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := plainNC.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range requests {
		e.send(t, fmt.Sprint(i), "")
	}
	by := map[string]int{}
	ids := map[string]bool{}
	for range requests {
		m := e.next(t)
		if ids[replyID(m)] {
			t.Errorf("request %s answered twice", replyID(m))
		}
		ids[replyID(m)] = true
		by[string(m.Data)]++
	}
	if by["sdk"] == 0 || by["plain"] == 0 || by["sdk"]+by["plain"] != requests {
		t.Errorf("answers by instance = %v, want some by each of sdk and plain, %d in all", by, requests)
	}
	close(bad)
	for problem := range bad {
		t.Error(problem)
	}
}

// TestDirectStopLosesNothing stops one of two instances while requests
// stream in: every request is answered, by one or the other. Those that
// the server sent to the stopping instance before it processed the
// unsubscription still reach it, and are handled.
func TestDirectStopLosesNothing(t *testing.T) {
	for round := range 5 {
		t.Run(fmt.Sprint("round-", round), func(t *testing.T) {
			e := newEnv(t)
			a := &workers.Server{NATS: e.conn(t), Group: "g", Subjects: []string{subject}, Handler: reply("a")}
			b := &workers.Server{NATS: e.conn(t), Group: "g", Subjects: []string{subject}, Handler: reply("b")}
			stopA := start(t, a)
			start(t, b)
			const requests = 300
			stopped := make(chan error, 1)
			for i := range requests {
				if i == requests/3 {
					go func() { stopped <- stopA() }()
				}
				if err := e.nc.PublishMsg(e.request(subject, fmt.Sprint(i), nil, time.Time{})); err != nil {
					t.Fatal(err)
				}
			}
			seen := map[string]bool{}
			for range requests {
				m := e.next(t)
				if seen[replyID(m)] {
					t.Errorf("request %s answered twice", replyID(m))
				}
				seen[replyID(m)] = true
			}
			if err := <-stopped; err != nil {
				t.Errorf("Serve = %v", err)
			}
			st := a.Stats()
			if st.Dropped != 0 || st.Handled != st.Replied {
				t.Errorf("a's Stats = %+v", st)
			}
		})
	}
}
