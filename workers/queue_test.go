package workers

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// msg returns a request message named name.
func msg(name string) *nats.Msg { return &nats.Msg{Subject: name} }

// takeAll takes from q at now until it is empty, and returns the names
// in the order taken.
func takeAll(q *queue, now time.Time, est time.Duration) []string {
	var got []string
	for {
		r, ok := q.take(now, est)
		if !ok {
			return got
		}
		got = append(got, r.msg.Subject)
	}
}

// staleAll calls stale at now until it sheds nothing, and returns the names
// of the requests shed.
func staleAll(q *queue, now time.Time, est time.Duration) []string {
	var got []string
	for {
		r, ok := q.stale(now, est)
		if !ok {
			return got
		}
		got = append(got, r.msg.Subject)
	}
}

// TestQueueLIFOSwitch: the queue serves the oldest request first while
// every request can start in time, and the newest first while it cannot
// (the backlog is behind) or the instance is overloaded.
func TestQueueLIFOSwitch(t *testing.T) {
	const est = 100 * time.Millisecond // one handler: one start every 100 ms
	tests := []struct {
		name       string
		deadline   time.Duration // of every request, from t0
		overloaded bool
		want       string // the order of the takes
	}{
		// At t0+20ms, 3 requests take 300 ms to start; the oldest must
		// start within 880 ms.
		{"in time: first in first out", time.Second, false, "[a b c]"},
		// It must start within 280 ms: the newest first, until the rest
		// can start in time.
		{"behind: last in first out", 400 * time.Millisecond, false, "[c a b]"},
		{"overloaded: last in first out", time.Second, true, "[c b a]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(16, 1)
			for _, name := range []string{"a", "b", "c"} {
				q.push(msg(name), t0.Add(tt.deadline), t0)
			}
			now := t0.Add(20 * time.Millisecond)
			if tt.overloaded {
				q.mu.Lock()
				q.overload(now, window(est))
				q.mu.Unlock()
			}
			if got := fmt.Sprint(takeAll(q, now, est)); got != tt.want {
				t.Errorf("taken %s, want %s", got, tt.want)
			}
		})
	}
}

// TestQueueBurst pushes at once more requests than the handlers can start
// before the oldest must start: the excess, oldest first, is shed at
// once, and what can be served is kept; a burst alone is no overload.
func TestQueueBurst(t *testing.T) {
	const est = 100 * time.Millisecond
	q := newQueue(64, 2) // a handler frees every 50 ms
	deadline := t0.Add(500 * time.Millisecond)
	for i := range 20 {
		q.push(msg(fmt.Sprint(i)), deadline, t0)
	}
	// 400 ms to start in: 7 requests take 350 ms, 8 would take 400.
	shed := staleAll(q, t0, est)
	if want := "[0 1 2 3 4 5 6 7 8 9 10 11 12]"; fmt.Sprint(shed) != want {
		t.Errorf("shed %v, want %s", shed, want)
	}
	if n := q.len(); n != 7 {
		t.Errorf("%d requests kept, want 7", n)
	}
	// Handlers start two requests 50 ms later: the rest still fit, and no
	// overload sheds them for their wait.
	now := t0.Add(50 * time.Millisecond)
	for range 2 {
		if _, ok := q.take(now, est); !ok {
			t.Fatal("take: empty")
		}
	}
	if shed := staleAll(q, now, est); len(shed) != 0 {
		t.Errorf("shed %v after the burst was worked off in part, want none", shed)
	}
	q.mu.Lock()
	overloaded := q.overloaded(now)
	q.mu.Unlock()
	if overloaded {
		t.Error("overloaded by one burst")
	}
}

// simPhase is a phase of a simulated load: a request every every, for a
// while.
type simPhase struct {
	every, length time.Duration
}

// simEvent is what became of one request in a simulation.
type simEvent struct {
	at     time.Time // when it was shed or started
	waited time.Duration
	shed   bool
	late   bool // started with less than the estimate left
}

// simulate drives q as a Direct instance does, in steps of step: the
// phases' requests, each with a deadline of budget, pushed as they come,
// stale called after each step's push, and requests taken for the
// handlers that are free, each busy for est. It returns what became of
// every request shed or started, and when the load ended.
func simulate(q *queue, est, budget time.Duration, phases []simPhase, after time.Duration) (events []simEvent, end time.Time) {
	const step = 500 * time.Microsecond
	var busy []time.Time // when each running handler ends
	now, pushed := t0, 0
	run := func(until time.Time, every time.Duration) {
		next := now
		for ; now.Before(until); now = now.Add(step) {
			if every > 0 && !now.Before(next) {
				q.push(msg(fmt.Sprint(pushed)), now.Add(budget), now)
				pushed++
				next = next.Add(every)
			}
			for {
				r, ok := q.stale(now, est)
				if !ok {
					break
				}
				events = append(events, simEvent{at: now, waited: now.Sub(r.at), shed: true})
			}
			running := busy[:0]
			for _, until := range busy {
				if now.Before(until) {
					running = append(running, until)
				}
			}
			busy = running
			for len(busy) < q.concurrency {
				r, ok := q.take(now, est)
				if !ok {
					break
				}
				events = append(events, simEvent{at: now, waited: now.Sub(r.at), late: r.deadline.Sub(now) < est})
				busy = append(busy, now.Add(est))
			}
		}
	}
	for _, p := range phases {
		run(now.Add(p.length), p.every)
	}
	end = now
	run(now.Add(after), 0)
	return events, end
}

// TestQueueSlough drives a queue at twice its capacity: once its backlog
// has kept falling behind for codelInterval, every request that is not
// started within slough is shed, the newest are started, as many as the
// handlers can, all in time, and the overload ends once the load does.
func TestQueueSlough(t *testing.T) {
	const (
		est         = 100 * time.Millisecond
		concurrency = 4
		load        = 3 * time.Second
	)
	q := newQueue(4096, concurrency)
	events, end := simulate(q, est, 500*time.Millisecond, []simPhase{{12500 * time.Microsecond, load}}, time.Second) // 80/s
	steady := t0.Add(time.Second)
	var started, shed, late int
	for _, ev := range events {
		switch {
		case ev.shed:
			shed++
		case ev.late:
			late++
		default:
			started++
		}
		if ev.at.Before(steady) || !ev.at.Before(end) {
			continue
		}
		if ev.waited > slough+time.Millisecond {
			t.Fatalf("a request was shed or started after waiting %v in the steady state, want at most slough (%v): %+v", ev.waited, slough, ev)
		}
	}
	t.Logf("%d started, %d late, %d shed", started, late, shed)
	if capacity := int(load / est * concurrency); started < capacity || late > 0 || shed == 0 {
		t.Errorf("%d started in time, %d late, %d shed; want the capacity, %d, in time, and the rest shed", started, late, shed, capacity)
	}
	q.mu.Lock()
	overloaded := q.overloaded(end.Add(time.Second))
	q.mu.Unlock()
	if overloaded {
		t.Error("still overloaded a second after the load ended")
	}
}

// TestQueueOverloadEnds drives a queue at twice its capacity, then at 90%
// of it: once a window passes in which fewer requests arrived than the
// handlers can start, the overload ends, and no request is shed any more.
func TestQueueOverloadEnds(t *testing.T) {
	const est = 100 * time.Millisecond
	q := newQueue(4096, 4) // 40 requests/s
	events, end := simulate(q, est, 500*time.Millisecond, []simPhase{
		{12500 * time.Microsecond, time.Second},     // 80/s
		{27778 * time.Microsecond, 2 * time.Second}, // 36/s
	}, 0)
	calm := end.Add(-2 * time.Second).Add(2 * window(est))
	for _, ev := range events {
		if ev.shed && ev.at.After(calm) {
			t.Errorf("a request shed at %v, after the load fell below the capacity at %v", ev.at.Sub(t0), end.Sub(t0)-2*time.Second)
		}
	}
	q.mu.Lock()
	overloaded := q.overloaded(end)
	q.mu.Unlock()
	if overloaded {
		t.Error("overloaded at 90% of the capacity")
	}
}

func TestQueueStale(t *testing.T) {
	const est = 100 * time.Millisecond
	tests := []struct {
		name     string
		deadline time.Duration // from t0; zero for none
		at       time.Duration // when stale is called
		want     bool
	}{
		{"time enough", time.Second, 0, false},
		{"less than the estimate left", time.Second, 901 * time.Millisecond, true},
		{"deadline passed", time.Second, 2 * time.Second, true},
		{"no deadline", 0, time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(16, 16)
			var deadline time.Time
			if tt.deadline != 0 {
				deadline = t0.Add(tt.deadline)
			}
			q.push(msg("r"), deadline, t0)
			if _, got := q.stale(t0.Add(tt.at), est); got != tt.want {
				t.Errorf("stale = %t, want %t", got, tt.want)
			}
		})
	}
}

// TestQueueNoDeadlineFirst: a request without a deadline is never shed
// for time, and holds back the shedding of those behind it.
func TestQueueNoDeadlineFirst(t *testing.T) {
	q := newQueue(16, 1)
	q.push(msg("forever"), time.Time{}, t0)
	q.push(msg("due"), t0.Add(ms(10)), t0)
	if shed := staleAll(q, t0.Add(time.Second), 0); len(shed) != 0 {
		t.Errorf("shed %v, want none", shed)
	}
	if next := q.next(t0, 0); !next.IsZero() {
		t.Errorf("next = %v, want none", next)
	}
}

func TestQueueFull(t *testing.T) {
	q := newQueue(3, 1)
	deadline := t0.Add(time.Second)
	for _, name := range []string{"a", "b", "c"} {
		if _, full := q.push(msg(name), deadline, t0); full {
			t.Fatalf("push %s: full", name)
		}
	}
	evicted, full := q.push(msg("d"), deadline, t0)
	if !full || evicted.msg.Subject != "a" {
		t.Fatalf("push to a full queue evicted %v, %t; want the oldest, a", evicted.msg, full)
	}
	if got := fmt.Sprint(takeAll(q, t0, 0)); got != "[b c d]" {
		t.Errorf("taken %s, want [b c d]", got)
	}
}

// TestQueueGrow: the ring grows as requests arrive, keeping their order,
// up to the queue's size.
func TestQueueGrow(t *testing.T) {
	q := newQueue(1000, 1)
	deadline := t0.Add(time.Second)
	// Move the head, so that the ring wraps before it grows.
	for range 40 {
		q.push(msg("x"), deadline, t0)
		q.take(t0, 0)
	}
	var want []string
	for i := range 200 {
		q.push(msg(fmt.Sprint(i)), deadline, t0)
		want = append(want, fmt.Sprint(i))
	}
	if got := takeAll(q, t0, 0); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("taken %v, want %v", got, want)
	}
	if n := len(q.ring); n != 256 {
		t.Errorf("ring of %d, want 256", n)
	}
}

func TestQueueNext(t *testing.T) {
	const est = 100 * time.Millisecond
	q := newQueue(16, 2)
	if next := q.next(t0, est); !next.IsZero() {
		t.Errorf("empty: next = %v, want none", next)
	}
	q.push(msg("a"), t0.Add(500*time.Millisecond), t0)
	q.push(msg("b"), t0.Add(500*time.Millisecond), t0)
	// Behind when 500 ms - est - now <= 2 × est / 2.
	if next, want := q.next(t0, est), t0.Add(300*time.Millisecond); !next.Equal(want) {
		t.Errorf("next = %v, want %v", next.Sub(t0), want.Sub(t0))
	}
	if shed := staleAll(q, t0.Add(300*time.Millisecond-1), est); len(shed) != 0 {
		t.Errorf("shed %v before next", shed)
	}
	if shed := staleAll(q, t0.Add(300*time.Millisecond), est); fmt.Sprint(shed) != "[a]" {
		t.Errorf("shed %v at next, want [a]", shed)
	}
	// Overloaded, the oldest is due after slough.
	q.mu.Lock()
	q.overload(t0, window(est))
	q.mu.Unlock()
	if next, want := q.next(t0, est), t0.Add(slough); !next.Equal(want) {
		t.Errorf("overloaded: next = %v, want %v", next.Sub(t0), want.Sub(t0))
	}
}
