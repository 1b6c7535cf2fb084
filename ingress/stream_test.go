package ingress

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
)

func TestEnsureStream(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.JetStream(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := StreamConfig{Name: "CAPTURE", Subject: "udpgate.capture.>", Stores: "udpgate.in.>", MaxAge: time.Hour, MaxBytes: 1 << 20}

	t.Run("missing stream is created", func(t *testing.T) {
		did, err := EnsureStream(ctx, js, want)
		if err != nil || !strings.Contains(did, "created") {
			t.Fatalf("EnsureStream: %q, %v", did, err)
		}
		info, err := js.Stream(ctx, "CAPTURE")
		if err != nil {
			t.Fatal(err)
		}
		c := info.CachedInfo().Config
		if c.Retention != jetstream.LimitsPolicy || c.Storage != jetstream.FileStorage || c.MaxAge != time.Hour ||
			c.MaxBytes != 1<<20 || c.Duplicates != DefaultDuplicates || len(c.Subjects) != 1 || c.Subjects[0] != "udpgate.capture.>" ||
			c.SubjectTransform == nil || c.SubjectTransform.Source != "udpgate.capture.>" || c.SubjectTransform.Destination != "udpgate.in.>" {
			t.Errorf("created %+v", c)
		}
		// A capture copy is stored under its request subject.
		if _, err := js.Publish(ctx, "udpgate.capture.9000", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if m, err := info.GetLastMsgForSubject(ctx, "udpgate.in.9000"); err != nil || string(m.Data) != "x" {
			t.Errorf("stored as udpgate.in.9000: %v, %v", m, err)
		}
	})
	t.Run("memory storage", func(t *testing.T) {
		if _, err := EnsureStream(ctx, js, StreamConfig{Name: "MEM", Subject: "mem.in.>", Memory: true}); err != nil {
			t.Fatal(err)
		}
		info, _ := js.Stream(ctx, "MEM")
		if got := info.CachedInfo().Config.Storage; got != jetstream.MemoryStorage {
			t.Errorf("storage %v, want memory", got)
		}
	})
	t.Run("async persist mode", func(t *testing.T) {
		if _, err := EnsureStream(ctx, js, StreamConfig{Name: "ASYNC", Subject: "async.in.>", Async: true}); err != nil {
			t.Fatal(err)
		}
		info, _ := js.Stream(ctx, "ASYNC")
		if c := info.CachedInfo().Config; c.PersistMode != jetstream.AsyncPersistMode || c.Storage != jetstream.FileStorage {
			t.Errorf("persist mode %v, storage %v; want async, file", c.PersistMode, c.Storage)
		}
		cinfo, _ := js.Stream(ctx, "CAPTURE")
		if got := cinfo.CachedInfo().Config.PersistMode; got != jetstream.DefaultPersistMode {
			t.Errorf("a stream created without Async has persist mode %v", got)
		}
		async := want
		async.Async = true
		did, err := EnsureStream(ctx, js, async)
		if err != nil || !strings.Contains(did, "as it is") || !strings.Contains(did, "keeps its mode") {
			t.Errorf("EnsureStream of an existing sync stream asked async: %q, %v", did, err)
		}
		if did, _ := EnsureStream(ctx, js, want); strings.Contains(did, "mode") {
			t.Errorf("EnsureStream of an existing stream in the mode asked: %q", did)
		}
	})
	t.Run("existing stream is used as it is", func(t *testing.T) {
		other := want
		other.MaxAge = 2 * time.Hour
		did, err := EnsureStream(ctx, js, other)
		if err != nil || !strings.Contains(did, "as it is") {
			t.Fatalf("EnsureStream: %q, %v", did, err)
		}
		info, _ := js.Stream(ctx, "CAPTURE")
		if got := info.CachedInfo().Config.MaxAge; got != time.Hour {
			t.Errorf("existing stream rewritten: MaxAge %s", got)
		}
	})
	t.Run("mismatch is reported and not rewritten", func(t *testing.T) {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "WRONG", Subjects: []string{"elsewhere.>"}, Retention: jetstream.WorkQueuePolicy})
		if err != nil {
			t.Fatal(err)
		}
		_, err = EnsureStream(ctx, js, StreamConfig{Name: "WRONG", Subject: "udpgate2.in.>"})
		if err == nil {
			t.Fatal("no error")
		}
		for _, w := range []string{"stream WRONG exists", `"elsewhere.>"`, `"udpgate2.in.>"`, "retention is WorkQueue", "never changes"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error lacks %q: %v", w, err)
			}
		}
		info, _ := js.Stream(ctx, "WRONG")
		if c := info.CachedInfo().Config; c.Subjects[0] != "elsewhere.>" || c.Retention != jetstream.WorkQueuePolicy {
			t.Errorf("stream was changed: %+v", c)
		}
	})
	t.Run("a capture stream of wire contract 1 is reported", func(t *testing.T) {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "V1", Subjects: []string{"v1.in.>", "v1.capture.>"}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = EnsureStream(ctx, js, StreamConfig{Name: "V1", Subject: "v1.capture.>", Stores: "v1.in.>"})
		if err == nil {
			t.Fatal("no error")
		}
		for _, w := range []string{"no subject transform", "contract 1", `"v1.in.>" overlaps`, "twice"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error lacks %q: %v", w, err)
			}
		}
	})
}
