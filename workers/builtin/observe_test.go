package builtin_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers/builtin"
)

// TestTimeAcceptsObserve: the Mux of CoAP accepts a registration to
// GET /time (Observe 0), and only that.
func TestTimeAcceptsObserve(t *testing.T) {
	for obs, want := range map[string]string{"0": "1", "1": "", "": ""} {
		r := coapRequest("GET", "/time", -1, "")
		r.Header = nats.Header{}
		r.CoAP.Observe = -1
		if obs != "" {
			r.Header.Set(schemas.HeaderCoAPObserve, obs)
			r.CoAP.Observe, _ = strconv.Atoi(obs)
		}
		var w recorder
		if err := builtin.CoAP().Handle(context.Background(), &w, r); err != nil {
			t.Fatal(err)
		}
		if got := w.Header().Get(schemas.HeaderCoAPObserve); got != want {
			t.Errorf("Observe %q: reply header %q, want %q", obs, got, want)
		}
	}
}

func TestNotifyTime(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	got := make(chan *nats.Msg, 8)
	sub, err := nc.ChanSubscribe(schemas.NotifySubject("p", 5683, []string{"time"}), got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	now := time.Date(2026, 3, 4, 6, 7, 8, 9, time.FixedZone("CET", 3600))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := builtin.NotifyTime(ctx, natstest.Connect(t, s), "p", 5683, 10*time.Millisecond, func() time.Time { return now }); err != nil {
			t.Error(err)
		}
	})
	for range 2 {
		select {
		case m := <-got:
			if string(m.Data) != "2026-03-04T05:07:08Z" || m.Header.Get(schemas.HeaderCoAPContentFormat) != "0" {
				t.Errorf("notification %q, header %v", m.Data, m.Header)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no notification")
		}
	}
	cancel()
	wg.Wait()
}
