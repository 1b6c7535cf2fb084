package guard

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func mustNew(t testing.TB, c Config) *Guard {
	t.Helper()
	g, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		in   string
		want string // prefixes joined by ","
		err  string
	}{
		{"", "", ""},
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{"10.0.0.0/8, 2001:db8::/32 192.0.2.7", "10.0.0.0/8,2001:db8::/32,192.0.2.7/32", ""},
		{"::1", "::1/128", ""},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8", ""},
		{"::ffff:192.0.2.1", "192.0.2.1/32", ""},
		{"10.0.0.0/8,10.0.0.0/8", "10.0.0.0/8", ""},
		{"10.1.2.3/8", "", "bits set after /8 (did you mean 10.0.0.0/8?)"},
		{"10.0.0.0/33", "", "not a CIDR prefix"},
		{"example.com", "", "not an address"},
		{"fe80::1%eth0", "", "not an address"},
		{"x, 10.0.0.0/8, y", "10.0.0.0/8", `"x" is not an address or CIDR prefix; "y"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ps, err := ParsePrefixes(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if s := strings.Join(got, ","); s != tt.want {
				t.Errorf("got %q, want %q", s, tt.want)
			}
		})
	}
}

func FuzzParsePrefixes(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "2001:db8::/32, 192.0.2.1", "::ffff:10.0.0.0/104", "1.2.3.4/33", "", ",,", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePrefixes(s)
		if err != nil {
			return
		}
		for _, p := range ps {
			if !p.IsValid() || p.Masked() != p || (p.Addr().Is4In6() && p.Bits() >= 96) || p.Addr().Zone() != "" {
				t.Fatalf("%q gave %v", s, p)
			}
			// Every prefix contains its own address, and the guard agrees.
			g := mustNew(t, Config{Deny: ps})
			if v, _ := g.Admit(p.Addr(), time.Now()); v != Denied {
				t.Fatalf("%q: %v not denied: %v", s, p.Addr(), v)
			}
		}
	})
}

func TestAllowDeny(t *testing.T) {
	pfx := func(s string) []netip.Prefix {
		ps, err := ParsePrefixes(s)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	g := mustNew(t, Config{
		Allow: pfx("10.0.0.0/8, 2001:db8::/32"),
		Deny:  pfx("10.6.0.0/16, 2001:db8:bad::/48, 10.0.0.9"),
	})
	tests := []struct {
		addr string
		want Verdict
	}{
		{"10.1.2.3", Admitted},
		{"::ffff:10.1.2.3", Admitted},
		{"10.6.7.8", Denied},
		{"::ffff:10.6.7.8", Denied},
		{"10.0.0.9", Denied},
		{"10.0.0.10", Admitted},
		{"192.0.2.1", NotAllowed},
		{"2001:db8::1", Admitted},
		{"2001:db8:bad::1", Denied},
		{"fe80::1%eth0", NotAllowed},
		{"2001:db9::1", NotAllowed},
	}
	for _, tt := range tests {
		if v, _ := g.Admit(netip.MustParseAddr(tt.addr), time.Now()); v != tt.want {
			t.Errorf("%s: %v, want %v", tt.addr, v, tt.want)
		}
	}
	st := g.Stats()
	if st.Admitted != 4 || st.Denied != 4 || st.NotAllowed != 3 {
		t.Errorf("stats %+v", st)
	}
	// Deny alone: everything else is admitted.
	g = mustNew(t, Config{Deny: pfx("127.0.0.2")})
	if v, _ := g.Admit(netip.MustParseAddr("127.0.0.1"), time.Now()); v != Admitted {
		t.Errorf("127.0.0.1: %v", v)
	}
	if v, _ := g.Admit(netip.MustParseAddr("127.0.0.2"), time.Now()); v != Denied {
		t.Errorf("127.0.0.2: %v", v)
	}
}

func TestSourceRate(t *testing.T) {
	g := mustNew(t, Config{Rate: 10, Burst: 3, Prefix6: 64})
	t0 := g.start
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 3 {
		if v, _ := g.Admit(a, t0); v != Admitted {
			t.Fatalf("datagram %d of the burst: %v", i, v)
		}
	}
	v, wait := g.Admit(a, t0)
	if v != RateLimited || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("fourth datagram: %v, wait %v; want rate_limited within 100ms", v, wait)
	}
	if v, _ := g.Admit(a, t0.Add(wait)); v != Admitted {
		t.Fatalf("after the wait: %v", v)
	}
	// Another /32 has its own bucket; the same /64 shares one.
	if v, _ := g.Admit(netip.MustParseAddr("192.0.2.2"), t0); v != Admitted {
		t.Errorf("other source: %v", v)
	}
	for i := range 3 {
		g.Admit(netip.MustParseAddr("2001:db8::"+string(rune('1'+i))), t0)
	}
	if v, _ := g.Admit(netip.MustParseAddr("2001:db8::ffff"), t0); v != RateLimited {
		t.Errorf("fourth address of one /64: %v", v)
	}
	if v, _ := g.Admit(netip.MustParseAddr("2001:db8:0:1::1"), t0); v != Admitted {
		t.Errorf("another /64: %v", v)
	}
	// A second later the bucket is full again, not fuller.
	later := t0.Add(10 * time.Second)
	for i := range 3 {
		if v, _ := g.Admit(a, later); v != Admitted {
			t.Fatalf("refilled burst %d: %v", i, v)
		}
	}
	if v, _ := g.Admit(a, later); v != RateLimited {
		t.Errorf("burst larger than Burst after idling: %v", v)
	}
}

func TestListenerRate(t *testing.T) {
	g := mustNew(t, Config{ListenerRate: 1, ListenerBurst: 2})
	t0 := g.start
	for i, want := range []Verdict{Admitted, Admitted, GlobalLimited} {
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		if v, _ := g.Admit(a, t0); v != want {
			t.Errorf("datagram %d: %v, want %v", i, v, want)
		}
	}
	if v, wait := g.Admit(netip.MustParseAddr("10.9.9.9"), t0); v != GlobalLimited || wait <= 0 || wait > time.Second {
		t.Errorf("%v, wait %v", v, wait)
	}
	if g.Stats().GlobalLimited != 2 {
		t.Errorf("stats %+v", g.Stats())
	}
}

// TestSpoofedFloodCannotGrowOrEvictBusy: a million spoofed sources leave
// the table at its capacity, and a source that keeps sending keeps its
// (empty) bucket, so it stays limited.
func TestSpoofedFloodCannotGrowOrEvictBusy(t *testing.T) {
	g := mustNew(t, Config{Rate: 1, Burst: 5, Sources: 1024})
	now := g.start
	busy := netip.MustParseAddr("198.51.100.7")
	limited := 0
	for i := range 1 << 20 {
		now = now.Add(time.Microsecond)
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if v, _ := g.Admit(a, now); v != Admitted {
			t.Fatalf("spoofed source %v, first datagram: %v", a, v)
		}
		if i%64 == 0 {
			if v, _ := g.Admit(busy, now); v == RateLimited {
				limited++
			}
		}
	}
	st := g.Stats()
	if st.Sources > st.SourceCapacity || st.SourceCapacity != 1024 {
		t.Errorf("sources %d, capacity %d", st.Sources, st.SourceCapacity)
	}
	if sent := (1 << 20) / 64; limited < sent-10 {
		t.Errorf("busy source limited %d times of %d: the flood evicted it", limited, sent)
	}
}

func TestAmplification(t *testing.T) {
	pfx, _ := ParsePrefixes("203.0.113.0/24")
	g := mustNew(t, Config{Factor: 3, Trust: pfx})
	now := time.Now()
	a := netip.MustParseAddr("192.0.2.1")
	// 10 bytes in is 38 on the wire, so 114 out: 86 bytes of payload.
	if !g.AllowReply(a, 10, 86, now) || g.AllowReply(a, 10, 87, now) {
		t.Error("IPv4 limit is not 3 * (10+28) - 28")
	}
	a6 := netip.MustParseAddr("2001:db8::1")
	if !g.AllowReply(a6, 10, 126, now) || g.AllowReply(a6, 10, 127, now) {
		t.Error("IPv6 limit is not 3 * (10+48) - 48")
	}
	if !g.AllowReply(netip.MustParseAddr("203.0.113.9"), 1, 65000, now) {
		t.Error("trusted source limited")
	}
	if g.Stats().Dropped != 2 {
		t.Errorf("dropped %d, want 2", g.Stats().Dropped)
	}
	if !g.Limited(a, now) || g.Trusted(a, now) {
		t.Fatal("unvalidated source not limited")
	}
	e := g.Echo(a, now)
	if g.CheckEcho(netip.MustParseAddr("192.0.2.2"), e[:], now) {
		t.Fatal("Echo of one address validates another")
	}
	if g.CheckEcho(a, e[:], now.Add(2*echoWindow)) {
		t.Fatal("stale Echo accepted")
	}
	bad := e
	bad[0] ^= 1
	if g.CheckEcho(a, bad[:], now) || g.CheckEcho(a, e[:4], now) {
		t.Fatal("forged Echo accepted")
	}
	if !g.CheckEcho(a, e[:], now.Add(echoWindow)) {
		t.Fatal("Echo from the previous window refused")
	}
	if g.Limited(a, now) || !g.Trusted(a, now) {
		t.Error("validated source still limited")
	}
	if !g.Limited(a, now.Add(echoWindow+DefaultValidFor+2*time.Second)) {
		t.Error("validation does not expire")
	}
	if !g.Limited(netip.MustParseAddr("192.0.2.2"), now) {
		t.Error("validation of one address covers another")
	}
	// Off.
	if off := mustNew(t, Config{}); off.Limited(a, now) || !off.AllowReply(a, 1, 65000, now) {
		t.Error("zero Config limits replies")
	}
}

func TestValidatedTableBounded(t *testing.T) {
	g := mustNew(t, Config{Factor: 3, Validated: 64})
	now := time.Now()
	for i := range 10000 {
		g.Validate(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), now)
	}
	if n := len(g.validated.e); n != 64 {
		t.Errorf("validated table has %d entries", n)
	}
	// The most recent ones are there.
	if g.Limited(netip.AddrFrom4([4]byte{10, 0, byte(9999 >> 8), byte(9999 & 0xff)}), now) {
		t.Error("latest validation lost")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{{Rate: -1}, {ListenerRate: -1}, {Prefix4: 33}, {Prefix6: 129}, {Factor: -1}, {Burst: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func BenchmarkAdmit(b *testing.B) {
	pfx, _ := ParsePrefixes("10.0.0.0/8, 2001:db8::/32")
	deny, _ := ParsePrefixes("10.6.0.0/16")
	g := mustNew(b, Config{Allow: pfx, Deny: deny, Rate: 1e6, Burst: 1e6, ListenerRate: 1e9})
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
	}
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		g.Admit(addrs[i&1023], now)
	}
}

func BenchmarkAdmitSpoofed(b *testing.B) {
	g := mustNew(b, Config{Rate: 100, Burst: 200})
	now := time.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		g.Admit(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
	}
}

func TestAdmitDoesNotAllocate(t *testing.T) {
	pfx, _ := ParsePrefixes("10.0.0.0/8, 2001:db8::/32")
	g := mustNew(t, Config{Allow: pfx, Deny: pfx[1:], Rate: 100, ListenerRate: 1000, Factor: 3})
	a := netip.MustParseAddr("10.1.2.3")
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() { g.Admit(a, now); g.Limited(a, now) }); n != 0 {
		t.Errorf("Admit allocates %v times", n)
	}
}

func TestExtremeRates(t *testing.T) {
	for _, c := range []Config{
		{Rate: 1e-12, Burst: 1 << 30, ListenerRate: 1e-12, ListenerBurst: 1 << 30},
		{Rate: 1e9, ListenerRate: 1e9},
		{Rate: 1e-12},
		{Rate: 1e9, Burst: 1},
	} {
		g := mustNew(t, c)
		a := netip.MustParseAddr("192.0.2.1")
		now := g.start
		if v, _ := g.Admit(a, now); v != Admitted {
			t.Errorf("%+v: first datagram %v", c, v)
		}
		for range 3 {
			now = now.Add(1000 * time.Hour)
			if v, w := g.Admit(a, now); v != Admitted && (w <= 0 || w > 1e15) {
				t.Errorf("%+v: %v, wait %v", c, v, w)
			}
		}
	}
}
