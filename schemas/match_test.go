package schemas

import "testing"

func TestCovers(t *testing.T) {
	tests := []struct {
		p, q string
		want bool
	}{
		{"udpgate.in.>", "udpgate.in.>", true},
		{"udpgate.>", "udpgate.in.>", true},
		{">", "udpgate.in.>", true},
		{"*.in.>", "udpgate.in.>", true},
		{"udpgate.in.*", "udpgate.in.>", false},
		{"udpgate.in.9000", "udpgate.in.>", false},
		{"udpgate.in", "udpgate.in.>", false},
		{"other.in.>", "udpgate.in.>", false},
		{"udpgate.in.>", "udpgate.>", false},
	}
	for _, tt := range tests {
		if got := Covers(tt.p, tt.q); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}

func TestOverlap(t *testing.T) {
	for _, tt := range []struct {
		p, q string
		want bool
	}{
		{"a.in.>", "a.in.>", true},
		{"a.>", "a.in.>", true},
		{"a.*.x", "a.in.>", true},
		{"a.capture.>", "a.in.>", false},
		{"a.in", "a.in.>", false},
		{"a.in.9000", "a.in.*", true},
		{"b.in.>", "a.in.>", false},
	} {
		if got := Overlap(tt.p, tt.q); got != tt.want {
			t.Errorf("Overlap(%q, %q) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}

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
		if got := Overlap(tt.a, tt.b); got != tt.overlap {
			t.Errorf("Overlap(%q, %q) = %v", tt.a, tt.b, got)
		}
		if got := Overlap(tt.b, tt.a); got != tt.overlap {
			t.Errorf("Overlap(%q, %q) = %v", tt.b, tt.a, got)
		}
		if got := Covers(tt.a, tt.b); got != tt.covers {
			t.Errorf("Covers(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}
