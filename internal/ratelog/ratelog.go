// Package ratelog logs events that can repeat per request (a reply
// refused, a failing call) at most once per interval, each line with how
// many happened since the previous one, so that a flood of them costs a
// line every few seconds, not one per datagram, and none goes unseen.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultEvery is Logger.Every when it is zero.
const DefaultEvery = 10 * time.Second

// Logger logs Msg for the first event at once, then at most once per
// Every with the count of events since its last line ("count") and the
// attributes of the latest one. Set its fields before the first Add; it is
// safe for concurrent use.
type Logger struct {
	Log   *slog.Logger // nil discards
	Level slog.Level
	Msg   string
	Every time.Duration

	mu     sync.Mutex // guards the fields below
	last   time.Time  // of the latest line
	count  int        // events since it
	latest []any      // the latest event's attributes
}

// Add counts one event with its attributes, and logs a line if one is due.
// A nil Logger discards.
func (l *Logger) Add(attrs ...any) {
	if l == nil || l.Log == nil {
		return
	}
	now := time.Now()
	l.mu.Lock()
	l.count++
	l.latest = attrs
	if !l.last.IsZero() && now.Sub(l.last) < l.every() {
		l.mu.Unlock()
		return
	}
	n, a := l.count, l.latest
	l.last, l.count, l.latest = now, 0, nil
	l.mu.Unlock()
	l.Log.Log(context.Background(), l.Level, l.Msg, append([]any{"count", n}, a...)...)
}

// Flush logs the events counted since the last line, if any: call it when
// the component stops.
func (l *Logger) Flush() {
	if l == nil || l.Log == nil {
		return
	}
	l.mu.Lock()
	n, a := l.count, l.latest
	l.last, l.count, l.latest = time.Now(), 0, nil
	l.mu.Unlock()
	if n > 0 {
		l.Log.Log(context.Background(), l.Level, l.Msg, append([]any{"count", n}, a...)...)
	}
}

func (l *Logger) every() time.Duration {
	if l.Every > 0 {
		return l.Every
	}
	return DefaultEvery
}
