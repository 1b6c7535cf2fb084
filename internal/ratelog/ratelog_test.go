package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestFirstAtOnceThenOncePerInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		l := &Logger{Log: slog.New(slog.NewTextHandler(&buf, nil)), Level: slog.LevelWarn, Msg: "refused", Every: time.Second}
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Go(func() { l.Add("i", i) })
		}
		wg.Wait()
		if lines := strings.Count(buf.String(), "\n"); lines != 1 || !strings.Contains(buf.String(), "count=1 ") {
			t.Fatalf("after 100 events at once: %q", buf.String())
		}
		time.Sleep(time.Second)
		l.Add("i", 100)
		if !strings.Contains(buf.String(), "count=100 i=100") {
			t.Fatalf("a second later: %q, want the 99 held back and this one", buf.String())
		}
		l.Add("i", 101)
		l.Flush()
		if !strings.HasSuffix(buf.String(), "count=1 i=101\n") || strings.Count(buf.String(), "\n") != 3 {
			t.Fatalf("after Flush: %q", buf.String())
		}
		l.Flush()
		if strings.Count(buf.String(), "\n") != 3 {
			t.Errorf("an empty Flush logged: %q", buf.String())
		}
	})
}
