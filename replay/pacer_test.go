package replay

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// The pacer keeps an absolute schedule: each send at the first send's time
// plus its recorded offset divided by the speed, exactly, on synctest's
// fake clock; a late start is caught up, not carried over.
func TestPacerSchedule(t *testing.T) {
	origin := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	offsets := []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 60 * time.Millisecond, 120 * time.Millisecond, 100 * time.Millisecond, 5 * time.Second}
	for _, speed := range []Speed{Original, 2, 0.5} {
		synctest.Test(t, func(t *testing.T) {
			p := pacer{speed: speed}
			start := time.Now()
			latest := time.Duration(0) // the latest offset so far
			for i, off := range offsets {
				called := time.Since(start)
				if err := p.wait(context.Background(), origin.Add(off)); err != nil {
					t.Fatal(err)
				}
				// On schedule, or at once when behind it (the sender
				// stalled, or the capture was recorded out of order).
				latest = max(latest, off)
				want := max(time.Duration(float64(off)/float64(speed)), called)
				if got := time.Since(start); got != want {
					t.Errorf("speed %v: request %d sent at %v, want %v", speed, i, got, want)
				}
				if i == 2 {
					// The sender stalls past the next request's time:
					// that one goes at once, and the ones after it keep
					// to the schedule from the first send.
					time.Sleep(time.Duration(float64(50*time.Millisecond) / float64(speed)))
				}
			}
			if want := time.Duration(float64(latest) / float64(speed)); time.Since(start) != want {
				t.Errorf("speed %v: the last send at %v, want %v", speed, time.Since(start), want)
			}
		})
	}
}

func TestPacerMaxDoesNotWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := pacer{speed: Max}
		start := time.Now()
		for _, off := range []time.Duration{0, time.Second, time.Hour} {
			if err := p.wait(context.Background(), time.Unix(0, 0).Add(off)); err != nil {
				t.Fatal(err)
			}
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("speed max waited %v", d)
		}
	})
}

func TestPacerStopsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p := pacer{speed: Original}
		start := time.Now()
		if err := p.wait(ctx, time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
		if err := p.wait(ctx, time.Unix(0, 0).Add(time.Hour)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait = %v, want the context's error", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("wait returned after %v, want the context's 1s", d)
		}
	})
}
