package guard

import (
	"net/netip"
	"testing"
	"time"
)

// The replies of one exchange share its credit.
func TestAllowReplies(t *testing.T) {
	g := mustNew(t, Config{Factor: 3})
	now := time.Now()
	a := netip.MustParseAddr("192.0.2.1")
	// 10 bytes in is 38 on the wire, so 114 out; 50 already sent leave 64:
	// 36 bytes of payload.
	if !g.AllowReplies(a, 10, 50, 36, now) || g.AllowReplies(a, 10, 50, 37, now) {
		t.Error("the credit left is not 3 * (10+28) - 50 - 28")
	}
	if g.Factor() != 3 || (*Guard)(nil).Factor() != 0 {
		t.Errorf("Factor = %d", g.Factor())
	}
}
