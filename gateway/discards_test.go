package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestCaptureLimitCountsDiscards is issue 17's case: a durable group
// paused while several thousand requests arrive, more than the capture's
// 1 MB holds, then resumed. Discard-old removes the oldest requests before
// the group takes them; each of them is counted, exactly: every request
// is answered, or counted where it ended, and the unanswered ones the
// stream no longer holds are the ones counted CaptureDiscarded.
func TestCaptureLimitCountsDiscards(t *testing.T) {
	const (
		requests = 6000
		chunk    = 100 // datagrams sent before waiting for the gateway to read them
		deadline = 5 * time.Second
	)
	s := natstest.RunServer(t)
	logs := &warnings{}
	g := &Gateway{
		Stream:   ingress.StreamConfig{MaxBytes: 1 << 20, Memory: true}, // limits as on file, stored quicker on a loaded machine
		Deadline: deadline,
		Log:      slog.New(logs),
	}
	addr := testGateway(t, s, g, "127.0.0.1:0")[0]
	listener := itoa(addr.Port) + "/raw"
	subject := schemas.InSubject("udpgate", uint16(addr.Port))

	// The durable group's consumer exists, and the gateway knows it, but
	// nobody pulls from it yet: the group is paused.
	wnc, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable: "paused", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}

	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var (
		mu       sync.Mutex // guards answered
		answered = map[string]int{}
	)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				mu.Lock()
				answered[string(buf[:n])]++
				mu.Unlock()
			}
		}
	}()
	defer func() { c.Close(); <-readDone }()

	ingressStats := func() ingress.Stats { return g.Stats().Ingress[listener] }
	for i := 0; i < requests; i += chunk {
		for j := i; j < min(i+chunk, requests); j++ {
			if _, err := fmt.Fprintf(c, "%06d", j); err != nil {
				t.Fatal(err)
			}
		}
		// Paced by the gateway's reading and JetStream's
		// acknowledgements, so that on a loaded machine the socket's
		// buffer never overflows and no capture copy waits long enough
		// to be published again.
		want := uint64(min(i+chunk, requests))
		waitUntil(t, "the gateway reads what was sent", 10*time.Second, func() bool { return ingressStats().Received >= want })
		waitUntil(t, "the stream stores what was read", 10*time.Second, func() bool {
			in := ingressStats()
			return in.Captured+in.InFlight+in.CaptureFailed >= in.Published
		})
	}
	in := ingressStats()
	if in.Received != requests || in.Published != requests || in.InFlight+in.CaptureFailed != 0 {
		t.Fatalf("not every request was published and captured, so the count cannot be checked: %+v", in)
	}

	// The group resumes: it answers every request still in the stream.
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := wnc.Publish(m.Headers().Get(schemas.HeaderReply), m.Data()); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			t.Errorf("worker publish: %v", err)
		}
		m.Ack()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	// Every exchange ends by its deadline; then the expiries are checked
	// against the stream.
	waitUntil(t, "every exchange settled", deadline+20*time.Second, func() bool { return g.Stats().Pending == 0 })
	stored := storedBodies(t, js)
	var removed []string
	mu.Lock()
	for i := range requests {
		if id := fmt.Sprintf("%06d", i); !stored[id] {
			removed = append(removed, id)
			if answered[id] > 0 {
				t.Errorf("request %s answered, yet removed from the stream before the group resumed", id)
			}
		}
	}
	clientGot := len(answered)
	mu.Unlock()
	if len(removed) < requests/4 {
		t.Fatalf("the stream removed %d of %d requests; the test needs it to remove many", len(removed), requests)
	}
	// The group was paused while the stream removed them: none of them
	// was taken by a worker, and each was counted.
	want := uint64(len(removed))
	waitUntil(t, "every removed request counted", 10*time.Second, func() bool {
		return g.Stats().CaptureDiscarded[listener] >= want
	})
	waitUntil(t, "every expiry checked", 10*time.Second, g.discards.idle)
	st := g.Stats()
	in, eg, discarded := st.Ingress[listener], st.EgressByListener[listener], st.CaptureDiscarded[listener]
	t.Logf("%d requests: %d removed by the capture's limits, %d answered (the client read %d), %d unanswered, %d counted discarded",
		requests, len(removed), eg.Sent, clientGot, eg.NoAnswer, discarded)
	if discarded != want {
		t.Errorf("%d counted discarded; want %d, the requests the stream no longer holds", discarded, want)
	}
	// The stored requests that went unanswered reached their deadline
	// before the group got to them (a very slow machine): no_answer, not
	// discarded.
	if got, want := eg.NoAnswer-discarded, uint64(len(stored))-eg.Sent; eg.NoAnswer < discarded || got != want {
		t.Errorf("%d unanswered and not discarded; want %d, the stored requests not answered", got, want)
	}
	if got := eg.Sent + discarded + (eg.NoAnswer - discarded) + eg.WorkerError + eg.NoWorker + eg.SendErrors + in.Expired; got != in.Published {
		t.Errorf("%d published, %d settled: answered %d, discarded %d, other no_answer %d; ingress %+v, egress %+v",
			in.Published, got, eg.Sent, discarded, eg.NoAnswer-discarded, in, eg)
	}
	if n := logs.requests(); n == 0 || n > discarded {
		t.Errorf("the warnings report %d requests, want between 1 and %d; warnings: %q", n, discarded, logs.messages())
	}
}

// storedBodies returns the bodies of the requests the capture stream
// holds.
func storedBodies(t *testing.T, js jetstream.JetStream) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oc, err := js.OrderedConsumer(ctx, schemas.StreamIn, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := oc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := info.NumPending
	bodies := map[string]bool{}
	for left > 0 {
		batch, err := oc.Fetch(int(min(left, 500)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			bodies[string(m.Data())] = true
			got++
		}
		if err := batch.Error(); err != nil || got == 0 {
			t.Fatalf("reading the capture: %d messages left, %d read: %v", left, got, err)
		}
		left -= uint64(min(uint64(got), left))
	}
	return bodies
}

// TestDiscardsWarnOncePerInterval: the warning comes at once, then at most
// once per interval with the count since the previous one.
func TestDiscardsWarnOncePerInterval(t *testing.T) {
	logs := &warnings{}
	d := newDiscards(nil, schemas.StreamIn, "udpgate", nil, 8, nil, slog.New(logs))
	d.names[9000] = "9000/raw"
	start := time.Now()
	for _, step := range []struct {
		after    time.Duration
		add      uint64
		wantNext time.Duration // when the next warning is due; 0: none
	}{
		{0, 3, 0}, // the first: at once
		{time.Second, 2, d.logEvery},
		{5 * time.Second, 1, d.logEvery},
		{d.logEvery, 0, 0}, // 3 since the first
		{d.logEvery + time.Second, 0, 0},
		{3 * d.logEvery, 4, 0}, // long after: at once
	} {
		if step.add > 0 {
			d.unlogged[9000] += step.add
		}
		next := d.report(start.Add(step.after))
		if want := start.Add(step.wantNext); step.wantNext == 0 && !next.IsZero() || step.wantNext != 0 && !next.Equal(want) {
			t.Errorf("after %s: next warning due %v; want %v", step.after, next, step.wantNext)
		}
	}
	if got, want := logs.counts(), []int64{3, 3, 4}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("warnings report %v requests; want %v: %q", got, want, logs.messages())
	}
}

// TestDiscardsCheck: of the captured requests that expired, those below
// the stream's first sequence are counted, on subjects a durable group
// covers; those without a capture copy are not.
func TestDiscardsCheck(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := ingress.StreamConfig{Name: schemas.StreamIn, Subject: "udpgate.capture.>", Stores: "udpgate.in.>", MaxBytes: 1 << 20}
	if _, err := ingress.EnsureStream(ctx, js, c); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := js.Publish(ctx, "udpgate.capture.9000", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	str, err := js.Stream(ctx, schemas.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	// Sequences 1 to 5 are gone, as discard-old removes them.
	if err := str.Purge(ctx, jetstream.WithPurgeSequence(6)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, schemas.StreamIn, jetstream.ConsumerConfig{
		Durable: "archive", FilterSubject: "udpgate.in.9000", AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	durs := newDurables(js, schemas.StreamIn, time.Second, slog.New(slog.DiscardHandler))
	dctx, dcancel := context.WithCancel(ctx)
	defer dcancel()
	go durs.run(dctx)

	d := newDiscards(js, schemas.StreamIn, "udpgate", durs, 16, nil, slog.New(slog.DiscardHandler))
	for _, port := range []uint16{9000, 9001} {
		d.names[port] = itoa(int(port)) + "/raw"
		d.counts[port] = new(atomic.Uint64)
	}
	d.captured(1, 2)  // removed: counted
	d.captured(2, 4)  // removed: counted
	d.captured(3, 4)  // published again: the later copy is still stored
	d.captured(3, 7)  //
	d.captured(4, 8)  // still stored: only no_answer
	d.captured(5, 3)  // removed, but no durable group covers port 9001
	d.captured(17, 1) // takes slot 1 from exchange 1, which is long gone
	d.captured(1, 9)  // a late acknowledgement of exchange 1: ignored
	for seq, port := range map[uint64]uint16{2: 9000, 3: 9000, 4: 9000, 5: 9001, 6: 9000, 17: 9000} {
		d.expired(seq, exchange.Exchange{Port: port}) // 6: never captured
	}
	if !d.check(ctx) {
		t.Fatal("check: the stream did not answer")
	}
	if got, other := d.count(9000), d.count(9001); got != 2 || other != 0 {
		t.Errorf("counted %d on 9000 and %d on 9001; want 2 (exchanges 2 and 17) and 0", got, other)
	}
}

// warnings is a slog.Handler that keeps the warnings logged.
type warnings struct {
	mu   sync.Mutex // guards recs
	recs []slog.Record
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnings) WithGroup(string) slog.Handler                { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recs = append(w.recs, r.Clone())
	return nil
}

// counts returns the "requests" attribute of each warning about the
// capture's limits.
func (w *warnings) counts() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int64
	for _, r := range w.recs {
		if !strings.Contains(r.Message, "capture stream's limits removed") {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "requests" {
				out = append(out, int64(a.Value.Uint64()))
			}
			return true
		})
	}
	return out
}

func (w *warnings) requests() uint64 {
	var n uint64
	for _, c := range w.counts() {
		n += uint64(c)
	}
	return n
}

func (w *warnings) messages() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.recs {
		out = append(out, r.Message)
	}
	return out
}

// waitUntil polls cond until it holds, limit at most.
func waitUntil(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
