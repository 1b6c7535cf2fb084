package workers_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/udpgate/udpgate/workers"
)

// TestAnnounce: an instance answers NATS's service discovery as a nats
// micro service named after its group, with one endpoint per subject
// (queue group = the group when direct), and counts its requests per
// endpoint; a Silent one answers nothing.
func TestAnnounce(t *testing.T) {
	for _, d := range deliveries {
		t.Run(d.String(), func(t *testing.T) {
			e := newEnv(t)
			s := &workers.Server{
				NATS: e.nc, Delivery: d, Group: "upper", Version: "1.2.3", Subjects: []string{subject},
				Handler: workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
					_, err := w.Write(r.Body)
					return err
				}),
			}
			stop := start(t, s)
			defer stop()
			ask := func(verb micro.Verb, name string, into any) {
				t.Helper()
				subj, err := micro.ControlSubject(verb, name, "")
				if err != nil {
					t.Fatal(err)
				}
				m, err := e.nc.Request(subj, nil, waitFor)
				if err != nil {
					t.Fatalf("%s: %v", subj, err)
				}
				if err := json.Unmarshal(m.Data, into); err != nil {
					t.Fatalf("%s: %v: %s", subj, err, m.Data)
				}
			}
			var ping micro.Ping
			ask(micro.PingVerb, "", &ping)
			if ping.Name != "upper" || ping.Version != "1.2.3" || ping.ID == "" || ping.Type != micro.PingResponseType {
				t.Errorf("ping %+v", ping)
			}
			var info micro.Info
			ask(micro.InfoVerb, "upper", &info)
			queue := "upper"
			if d == workers.Durable {
				queue = ""
			}
			if len(info.Endpoints) != 1 || info.Endpoints[0].Subject != subject || info.Endpoints[0].QueueGroup != queue ||
				info.Metadata[workers.MetadataDelivery] != d.String() || info.ID != ping.ID {
				t.Errorf("info %+v", info)
			}
			e.send(t, "a", "x")
			e.next(t)
			var stats micro.Stats
			ask(micro.StatsVerb, "upper", &stats)
			if len(stats.Endpoints) != 1 || stats.Endpoints[0].NumRequests != 1 || stats.Endpoints[0].NumErrors != 0 {
				t.Errorf("stats %+v", stats)
			}
		})
	}
	t.Run("silent", func(t *testing.T) {
		e := newEnv(t)
		s := &workers.Server{
			NATS: e.nc, Group: "quiet", Silent: true, Subjects: []string{subject},
			Handler: workers.HandlerFunc(func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil }),
		}
		stop := start(t, s)
		defer stop()
		if _, err := e.nc.Request("$SRV.PING.quiet", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("a silent group answered discovery: %v", err)
		}
	})
}

// TestAnnounceLinks: a group whose handler is a Mux announces its CoAP
// resources, with the attributes its Discovery was given, as its
// /.well-known/core would list them.
func TestAnnounceLinks(t *testing.T) {
	e := newEnv(t)
	mux := workers.NewMux()
	ok := func(context.Context, workers.ResponseWriter, *workers.Request) error { return nil }
	mux.RouteFunc("GET /time", ok)
	mux.RouteFunc("GET /sensors/{id}", ok)
	mux.Route("GET "+workers.WellKnownCore, mux.Discovery(workers.Links{"/time": `rt="time";ct=0`, "/sensors/1": `rt="temperature"`}))
	s := &workers.Server{NATS: e.nc, Group: "sensors", Subjects: mux.Subjects(prefix, 5683), Handler: mux}
	stop := start(t, s)
	defer stop()
	m, err := e.nc.Request("$SRV.INFO.sensors", nil, waitFor)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	want := `</sensors/1>;rt="temperature",</time>;rt="time";ct=0`
	if got := info.Metadata[workers.MetadataCoAPLinks]; got != want {
		t.Errorf("links %q, want %q", got, want)
	}
	if len(info.Endpoints) != len(s.Subjects) {
		t.Errorf("%d endpoints for %d subjects", len(info.Endpoints), len(s.Subjects))
	}
}
