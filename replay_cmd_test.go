package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
			err := runCommand(context.Background(), append([]string{"replay"}, tt.args...), &out, &errb)
			if err == nil || exitCode(err) != 2 {
				t.Fatalf("err %v (exit %d), want a usage error", err, exitCode(err))
			}
			if msg := strings.ToLower(err.Error() + errb.String()); !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not mention %q", msg, tt.want)
			}
		})
	}
}
