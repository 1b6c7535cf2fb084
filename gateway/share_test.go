package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestListenerShare: on a node with two listeners and a table of 64, a
// flood on a listener nobody answers fills only its share of the table
// (half, by default), so the other listener's requests are still
// answered; the flood's refusals count as listener_full, not table_full,
// and once its exchanges pass their deadline the flooded listener opens
// exchanges again.
func TestListenerShare(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{MaxPending: 64, Deadline: 3 * time.Second}
	addrs := testGateway(t, s, g, "127.0.0.1:0", "127.0.0.1:0")
	flooded, answered := addrs[0], addrs[1]
	contractWorker(t, s, "echo", schemas.InSubject(schemas.DefaultPrefix, uint16(answered.Port)), echo)
	// A group that takes the flooded listener's requests and answers none.
	contractWorker(t, s, "silent", schemas.InSubject(schemas.DefaultPrefix, uint16(flooded.Port)), func(*nats.Msg) []byte { return nil })
	a, b := itoa(flooded.Port)+"/raw", itoa(answered.Port)+"/raw"

	c, err := net.DialUDP("udp", nil, flooded)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const flood = 100 // more than the whole table
	for i := range flood {
		c.Write([]byte("unanswered " + itoa(i)))
	}
	waitFor(t, "every flooded datagram published or refused", func() bool {
		st := g.Stats().Ingress[a]
		return st.Received == flood && st.Published+st.ListenerFull+st.TableFull == flood
	})
	st := g.Stats()
	if in := st.Ingress[a]; in.ListenerFull == 0 || in.TableFull != 0 || in.Pending > 32 || in.PendingLimit != 32 {
		t.Fatalf("flooded listener: %+v; want listener_full drops, no table_full, at most 32 pending of a limit of 32", in)
	}
	if st.Pending > 32 {
		t.Fatalf("%d exchanges open, more than the flooded listener's share of 32", st.Pending)
	}

	for i := range 5 {
		got, err := exchangeUDP(t, answered.String(), []byte("ping "+itoa(i)), 2*time.Second)
		if err != nil {
			t.Fatalf("request %d on the other listener, the flood's exchanges open: %v (stats %+v)", i, err, g.Stats().Ingress[b])
		}
		if want := "echo:ping " + itoa(i); string(got) != want {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
	if in := g.Stats().Ingress[b]; in.TableFull != 0 || in.ListenerFull != 0 {
		t.Errorf("answered listener refused requests: %+v", in)
	}

	waitFor(t, "the flood's exchanges expired", func() bool { return g.Stats().Ingress[a].Pending == 0 })
	before := g.Stats().Ingress[a]
	c.Write([]byte("after the deadline"))
	waitFor(t, "a new exchange on the flooded listener", func() bool {
		in := g.Stats().Ingress[a]
		return in.Published == before.Published+1 && in.Pending == 1
	})
	if in := g.Stats().Ingress[a]; in.ListenerFull != before.ListenerFull {
		t.Errorf("listener_full %d after the deadline, was %d", in.ListenerFull, before.ListenerFull)
	}
}

func TestListenerShareDefault(t *testing.T) {
	one := []Listener{{}}
	two := []Listener{{}, {}}
	ingestAndOne := []Listener{{}, {NoReply: true}}
	tests := []struct {
		name string
		set  int
		ls   []Listener
		want int
	}{
		{"one listener takes the whole table", 0, one, 0},
		{"two listeners take half each", 0, two, 512},
		{"ingest-only listeners do not count", 0, ingestAndOne, 0},
		{"set", 100, one, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := listenerShare(tt.set, 1024, tt.ls, 0); got != tt.want {
				t.Errorf("listenerShare(%d, 1024, %d listeners) = %d, want %d", tt.set, len(tt.ls), got, tt.want)
			}
		})
	}
}
