package gateway

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
)

// moreWorker answers every request on subject through the wire contract
// alone: it publishes each of bodies(m) to the request's reply subject,
// all but the last with udpgate-more, after waiting for pause(m) if not
// nil.
func moreWorker(t testing.TB, s *server.Server, subject string, bodies func(*nats.Msg) [][]byte, pause func(*nats.Msg, int)) {
	t.Helper()
	nc := natstest.Connect(t, s)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		bs := bodies(m)
		for i, b := range bs {
			if pause != nil {
				pause(m, i)
			}
			r := &nats.Msg{Subject: m.Reply, Data: b, Header: nats.Header{}}
			if i < len(bs)-1 {
				r.Header.Set(schemas.HeaderMore, "1")
			}
			nc.PublishMsg(r)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
}

func parts(n int, size int) func(*nats.Msg) [][]byte {
	return func(*nats.Msg) [][]byte {
		var out [][]byte
		for i := range n {
			out = append(out, bytes.Repeat([]byte{'a' + byte(i)}, size))
		}
		return out
	}
}

// Three replies with more to follow, then the last one, reach the client
// in order; the exchange is counted answered once.
func TestMoreRepliesInOrder(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	name := schemas.Listener(uint16(addrs[0].Port), schemas.ProtocolRaw)
	moreWorker(t, s, schemas.InSubject(schemas.DefaultPrefix, uint16(addrs[0].Port)), parts(4, 8), nil)

	c := dialFrom(t, "127.0.0.1", addrs[0])
	if _, err := c.Write([]byte("stream")); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		got := read(c, 5*time.Second)
		if want := bytes.Repeat([]byte{'a' + byte(i)}, 8); !bytes.Equal(got, want) {
			t.Fatalf("reply %d: %q, want %q", i, got, want)
		}
	}
	waitFor(t, "the exchange closed", func() bool { return g.Stats().Pending == 0 })
	st := g.Stats().EgressByListener[name]
	if st.More != 3 || st.Sent != 1 || st.Duplicate != 0 || st.NoAnswer != 0 {
		t.Errorf("more %d, sent %d, duplicate %d, no answer %d; want 3, 1, 0, 0", st.More, st.Sent, st.Duplicate, st.NoAnswer)
	}
}

// To an unvalidated source, the replies of one exchange stay within the
// amplification credit of its request: the reply beyond is dropped and
// ends the exchange.
func TestMoreRepliesStopAtBudget(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "more"}
	addr, gd := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{Factor: 3})
	serveGateway(t, g)
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolRaw)
	// A 20-byte request is 48 bytes on the wire: 144 may go back, two
	// 40-byte replies (68 each) and not a third.
	moreWorker(t, s, schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port)), parts(4, 40), nil)

	c := dialFrom(t, "127.0.0.9", addr)
	if _, err := c.Write([]byte("0123456789abcdefghij")); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if got := read(c, 5*time.Second); len(got) != 40 || got[0] != 'a'+byte(i) {
			t.Fatalf("reply %d: %q", i, got)
		}
	}
	waitFor(t, "the last reply counted a duplicate", func() bool { return g.Stats().EgressByListener[name].Duplicate == 1 })
	if got := read(c, 50*time.Millisecond); got != nil {
		t.Errorf("a reply beyond the budget arrived: %q", got)
	}
	st := g.Stats().EgressByListener[name]
	if st.More != 2 || st.Sent != 1 || gd.Stats().Dropped != 1 {
		t.Errorf("more %d, sent %d, dropped %d; want 2, 1, 1", st.More, st.Sent, gd.Stats().Dropped)
	}
}

// A reply with more to follow after the deadline is dropped as late; the
// exchange, answered by the first, is counted once, not as unanswered.
func TestMoreReplyAfterDeadlineIsLate(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 300 * time.Millisecond}
	addrs := testGateway(t, s, g, "127.0.0.1:0")
	name := schemas.Listener(uint16(addrs[0].Port), schemas.ProtocolRaw)
	more := func(*nats.Msg) [][]byte { return [][]byte{[]byte("first"), []byte("too late"), []byte("unsent")} }
	moreWorker(t, s, schemas.InSubject(schemas.DefaultPrefix, uint16(addrs[0].Port)), more, func(m *nats.Msg, i int) {
		if i == 1 {
			time.Sleep(time.Until(deadlineOf(t, m)) + 50*time.Millisecond) // the worker is slow: past the deadline
		}
	})

	c := dialFrom(t, "127.0.0.1", addrs[0])
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := read(c, 5*time.Second); string(got) != "first" {
		t.Fatalf("first reply %q", got)
	}
	waitFor(t, "both late replies counted", func() bool {
		st := g.Stats().EgressByListener[name]
		return st.Late+st.Duplicate == 2
	})
	if got := read(c, 50*time.Millisecond); got != nil {
		t.Errorf("a reply after the deadline arrived: %q", got)
	}
	st := g.Stats().EgressByListener[name]
	if st.More != 1 || st.Sent != 1 || st.NoAnswer != 0 || st.Late == 0 {
		t.Errorf("more %d, sent %d, no answer %d, late %d; want 1, 1, 0, at least 1", st.More, st.Sent, st.NoAnswer, st.Late)
	}
}

// An rpc exchange answers once: a reply with more to follow is sent as
// its reply, counted, and what follows is a duplicate.
func TestMoreOnRPCIsTheReply(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "more-rpc"}
	addr, _ := guardedListener(t, g, schemas.ProtocolRPC, guard.Config{})
	serveGateway(t, g)
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolRPC)
	moreWorker(t, s, schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port))+".>", parts(2, 4), nil)

	call, _ := proto.Marshal(&rpcpb.Call{Id: 3, Service: "S", Method: "M"})
	c := dialFrom(t, "127.0.0.1", addr)
	var reply rpcpb.Reply
	if err := proto.Unmarshal(roundTrip(t, c, call), &reply); err != nil || reply.Id != 3 || string(reply.Body) != "aaaa" {
		t.Fatalf("reply %v %v", &reply, err)
	}
	waitFor(t, "the second reply counted a duplicate", func() bool { return g.Stats().EgressByListener[name].Duplicate >= 1 })
	st := g.Stats().EgressByListener[name]
	if st.MoreRefused < 1 || st.More != 0 || st.Sent < 1 {
		t.Errorf("more refused %d, more %d, sent %d", st.MoreRefused, st.More, st.Sent)
	}
	if got := read(c, 50*time.Millisecond); got != nil {
		t.Errorf("a second reply arrived: %d bytes", len(got))
	}
}

// A CoAP exchange answers once too: a reply with more to follow is the
// response, and is counted.
func TestMoreOnCoAPIsTheResponse(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "more-coap"}
	addr, _ := guardedListener(t, g, schemas.ProtocolCoAP, guard.Config{})
	serveGateway(t, g)
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolCoAP)
	moreWorker(t, s, schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port))+".>", parts(2, 4), nil)

	co := dialCoAP(t, addr.String())
	if code, body := coapDo(t, co, codes.GET, "/stream", nil); code != codes.Content || body != "aaaa" {
		t.Fatalf("response %v %q, want 2.05 %q", code, body, "aaaa")
	}
	waitFor(t, "the second reply counted a duplicate", func() bool { return g.Stats().EgressByListener[name].Duplicate >= 1 })
	if st := g.Stats().EgressByListener[name]; st.MoreRefused < 1 || st.More != 0 {
		t.Errorf("more refused %d, more %d", st.MoreRefused, st.More)
	}
}

// moreSDKWorker runs a group of the Go SDK on subject that answers each
// request with bodies: all but the last through Request.ReplyMore, the
// last written as the final reply. It reports ReplyMore's errors on errs.
func moreSDKWorker(t *testing.T, s *server.Server, d workers.Delivery, subject string, bodies [][]byte, errs chan<- error) {
	t.Helper()
	startWorker(t, s, d, "more-"+d.String(), subject, func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		for _, b := range bodies[:len(bodies)-1] {
			if err := r.ReplyMore(ctx, b); err != nil {
				errs <- err
				return err
			}
		}
		_, err := w.Write(bodies[len(bodies)-1])
		return err
	})
}

// A handler of the Go SDK sends replies with more to follow through
// Request.ReplyMore, in both deliveries: the raw client receives them in
// order, then the final reply, which ends the exchange.
func TestReplyMoreThroughTheSDK(t *testing.T) {
	for _, d := range []workers.Delivery{workers.Direct, workers.Durable} {
		t.Run(d.String(), func(t *testing.T) {
			s := natstest.RunServer(t)
			g := &Gateway{}
			addrs := testGateway(t, s, g, "127.0.0.1:0")
			name := schemas.Listener(uint16(addrs[0].Port), schemas.ProtocolRaw)
			bodies := parts(4, 8)(nil)
			errs := make(chan error, 4)
			moreSDKWorker(t, s, d, schemas.InSubject(schemas.DefaultPrefix, uint16(addrs[0].Port)), bodies, errs)

			c := dialFrom(t, "127.0.0.1", addrs[0])
			if _, err := c.Write([]byte("stream")); err != nil {
				t.Fatal(err)
			}
			for i, want := range bodies {
				if got := read(c, 5*time.Second); !bytes.Equal(got, want) {
					t.Fatalf("reply %d: %q, want %q", i, got, want)
				}
			}
			waitFor(t, "the exchange closed", func() bool { return g.Stats().Pending == 0 })
			st := g.Stats().EgressByListener[name]
			if st.More != 3 || st.Sent != 1 || st.Duplicate != 0 || st.NoAnswer != 0 {
				t.Errorf("more %d, sent %d, duplicate %d, no answer %d; want 3, 1, 0, 0", st.More, st.Sent, st.Duplicate, st.NoAnswer)
			}
			select {
			case err := <-errs:
				t.Errorf("ReplyMore: %v", err)
			default:
			}
		})
	}
}

// The replies a handler sends through Request.ReplyMore to an
// unvalidated source stop at the amplification limit, as in
// TestMoreRepliesStopAtBudget: the gateway drops the one beyond, which
// ends the exchange, and the final reply is a duplicate.
func TestReplyMoreThroughTheSDKStopsAtBudget(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{NATS: natstest.Connect(t, s), Node: "more-sdk"}
	addr, gd := guardedListener(t, g, schemas.ProtocolRaw, guard.Config{Factor: 3})
	serveGateway(t, g)
	name := schemas.Listener(uint16(addr.Port), schemas.ProtocolRaw)
	// A 20-byte request is 48 bytes on the wire: 144 may go back, two
	// 40-byte replies (68 each) and not a third.
	errs := make(chan error, 4)
	moreSDKWorker(t, s, workers.Direct, schemas.InSubject(schemas.DefaultPrefix, uint16(addr.Port)), parts(4, 40)(nil), errs)

	c := dialFrom(t, "127.0.0.9", addr)
	if _, err := c.Write([]byte("0123456789abcdefghij")); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if got := read(c, 5*time.Second); len(got) != 40 || got[0] != 'a'+byte(i) {
			t.Fatalf("reply %d: %q", i, got)
		}
	}
	waitFor(t, "the final reply counted a duplicate", func() bool { return g.Stats().EgressByListener[name].Duplicate == 1 })
	if got := read(c, 50*time.Millisecond); got != nil {
		t.Errorf("a reply beyond the budget arrived: %q", got)
	}
	st := g.Stats().EgressByListener[name]
	if st.More != 2 || st.Sent != 1 || gd.Stats().Dropped != 1 {
		t.Errorf("more %d, sent %d, dropped %d; want 2, 1, 1", st.More, st.Sent, gd.Stats().Dropped)
	}
	select {
	case err := <-errs:
		t.Errorf("ReplyMore: %v (a reply the gateway drops is sent all the same)", err)
	default:
	}
}
