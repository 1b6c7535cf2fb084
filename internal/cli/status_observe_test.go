package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/gateway"
)

// TestStatusObserved: go-coap's client observes the built-in GET /time
// of a real `udpgate run`; `udpgate status` lists the resource with its
// observer, read from the Observe bucket.
func TestStatusObserved(t *testing.T) {
	p := startRun(t)
	co, err := coapudp.Dial(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.coap).String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan struct{}, 64)
	obs, err := co.Observe(ctx, "/time", func(*pool.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Cancel(context.Background())
	<-got
	// The registration reaches the bucket after its response.
	var st gateway.Status
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(st.Observed) == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("status lists no observed resource: %+v", st)
		case <-tick.C:
		}
		raw, err := status(t, "-url", p.http, "-json")
		if err != nil {
			t.Fatalf("status -json: %v", err)
		}
		st = gateway.Status{}
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			t.Fatalf("status -json: %v\n%s", err, raw)
		}
	}
	if o := st.Observed; st.ObserveBucket != "udpgate_observe" || len(o) != 1 || o[0].Port != p.coap || o[0].Resource != "/time" ||
		o[0].Observers != 1 || o[0].Nodes[st.Node] != 1 {
		t.Fatalf("bucket %q, observed %+v", st.ObserveBucket, o)
	}
	table, err := status(t, "-url", p.http)
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`(?m)^  ` + strconv.Itoa(int(p.coap)) + ` +/time +1 +` + regexp.QuoteMeta(st.Node) + `=1$`)
	if !strings.Contains(table, "observed CoAP resources, every node's (Observe bucket udpgate_observe):") || !row.MatchString(table) {
		t.Fatalf("status table:\n%s", table)
	}
}

// TestPrintObserved: the observed resources of two nodes, as a table.
func TestPrintObserved(t *testing.T) {
	st := gateway.Status{Node: "a", Prefix: "udpgate", ObserveBucket: "obs", Observed: []gateway.ObservedResource{
		{Port: 5683, Resource: "/sensors/1", Subject: "udpgate.notify.5683.sensors.1", Observers: 3, Nodes: map[string]int{"b": 1, "a": 2}},
		{Port: 5683, Resource: "/", Subject: "udpgate.notify.5683", Observers: 1, Nodes: map[string]int{"b": 1}},
	}}
	var b bytes.Buffer
	if err := printStatus(&b, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"observed CoAP resources, every node's (Observe bucket obs):\n",
		"  PORT  RESOURCE    OBSERVERS  NODES\n",
		"  5683  /sensors/1  3          a=2 b=1\n",
		"  5683  /           1          b=1\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	st.Observed = nil
	if err := printStatus(&b, st, time.Now()); err != nil || !strings.Contains(b.String(), "no CoAP resource is observed (Observe bucket obs)") {
		t.Errorf("%v:\n%s", err, b.String())
	}
	b.Reset()
	st.ObserveBucket = ""
	if err := printStatus(&b, st, time.Now()); err != nil || strings.Contains(b.String(), "observe") {
		t.Errorf("%v:\n%s", err, b.String())
	}
}
