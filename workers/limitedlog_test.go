package workers

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
)

// recordHandler keeps the records logged through it.
type recordHandler struct {
	mu      sync.Mutex // guards records
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

// TestLimitedLog: a failure that repeats (a fetch every 250 ms while NATS
// is down) is logged once per warnEvery with the count of the others, and
// its end once.
func TestLimitedLog(t *testing.T) {
	h := &recordHandler{}
	log := slog.New(h)
	var l limitedLog
	l.ok(log, "recovered") // nothing failed: nothing to say
	for range 10 {
		l.failed(log, "fetch", errors.New("no connection"))
	}
	l.ok(log, "recovered")
	l.ok(log, "recovered")
	l.failed(log, "fetch", errors.New("again"))
	var got []string
	for _, r := range h.records {
		line := r.Level.String() + " " + r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "err" {
				line += " " + a.Key + "=" + a.Value.String()
			}
			return true
		})
		got = append(got, line)
	}
	want := []string{
		"WARN fetch not_logged=0",
		"INFO recovered failures_not_logged=9",
		"WARN fetch not_logged=0",
	}
	if len(got) != len(want) {
		t.Fatalf("logged %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d: %q, want %q", i, got[i], want[i])
		}
	}
}
