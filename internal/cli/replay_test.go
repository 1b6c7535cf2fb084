package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/natstest"
)

func TestReplayCommandUsage(t *testing.T) {
	defaults(t)
	t.Setenv("UDPGATE_NODE", "n1")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"compare needs a subject replay", []string{"--compare", "--to", "udp://127.0.0.1:9"}, "compare"},
		{"bad speed", []string{"--speed", "fast"}, "speed"},
		{"bad window", []string{"--since", "yesterday"}, "since"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := Run(context.Background(), append([]string{"replay"}, tt.args...), &out, &errb)
			if err == nil || exitCode(err) != 2 {
				t.Fatalf("err %v (exit %d), want a usage error", err, exitCode(err))
			}
			if msg := strings.ToLower(err.Error() + errb.String()); !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not mention %q", msg, tt.want)
			}
		})
	}
}

// TestReplayCommandPrepare: `udpgate replay --prepare` creates the replay
// stream with the capture's shape, and refuses a stream made for wire
// contract 1.
func TestReplayCommandPrepare(t *testing.T) {
	defaults(t)
	s := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", s.ClientURL())
	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := Run(ctx, []string{"replay", "--prepare", "--subject-prefix", "udpgate.shadow"}, &out, &errb); err != nil {
		t.Fatalf("replay --prepare: %v\n%s", err, errb.String())
	}
	for _, want := range []string{"created stream UDPGATE_SHADOW on udpgate.shadow.capture.>, stored as udpgate.shadow.in.>", "direct candidate groups subscribe to udpgate.shadow.in.PORT..."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}

	_, js := natstest.JetStream(t, s)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OLD_REPLAY", Subjects: []string{"old.replay.in.>"}}); err != nil {
		t.Fatal(err)
	}
	err := Run(ctx, []string{"replay", "--prepare", "--subject-prefix", "old.replay", "--replay-stream", "OLD_REPLAY"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "nats stream rm OLD_REPLAY") {
		t.Errorf("replay --prepare with a contract 1 stream: %v", err)
	}
}
