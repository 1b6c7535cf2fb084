package replay

import "testing"

func TestSubjectPatterns(t *testing.T) {
	tests := []struct {
		a, b            string
		overlap, covers bool
	}{
		{"udpgate.in.>", "udpgate.replay.in.>", false, false},
		{"udpgate.in.>", "udpgate.in.9000", true, true},
		{"udpgate.*.>", "udpgate.replay.in.>", true, true},
		{"udpgate.reply.>", "udpgate.replay.reply.x", false, false},
		{"udpgate.>", "udpgate", false, false},
		{"a.*", "a.>", true, false},
		{"a.*.c", "a.b.*", true, false},
		{"a.b", "a.b", true, true},
		{"a.b", "a.c", false, false},
	}
	for _, tt := range tests {
		if got := overlap(tt.a, tt.b); got != tt.overlap {
			t.Errorf("overlap(%q, %q) = %v", tt.a, tt.b, got)
		}
		if got := overlap(tt.b, tt.a); got != tt.overlap {
			t.Errorf("overlap(%q, %q) = %v", tt.b, tt.a, got)
		}
		if got := covers(tt.a, tt.b); got != tt.covers {
			t.Errorf("covers(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}
