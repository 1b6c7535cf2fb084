package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/guard"
)

func TestGuardConfigDefaults(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := c.Guard
	if g.Rate != 1000 || g.Burst != 2000 || g.Prefix4 != 32 || g.Prefix6 != 64 || g.ListenerRate != 0 || g.Factor != 3 ||
		len(g.Allow)+len(g.Deny)+len(g.Trust) != 0 {
		t.Errorf("defaults %+v", g)
	}
	if _, err := guard.New(g); err != nil {
		t.Errorf("defaults refused: %v", err)
	}
}

func TestGuardConfigErrorsNameTheVariable(t *testing.T) {
	e := defaults(t)
	e.Allow, e.Deny, e.Trust = "10.0.0.0/8,nope", "10.1.2.3/16", "::1"
	e.Rate, e.Burst, e.SourcePrefix = "-1", "x", "32"
	e.ListenerRate, e.ListenerBurst, e.Amplification = "fast", "-3", "1.5"
	e.Listeners = "9000/raw;rate=5;deny=10.0.0.0/8 192.0.2.1,9001/raw;colour=red,9002/raw;rate=1;rate=2"
	_, err := e.parse(nil)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`UDPGATE_ALLOW: allow: "nope" is not an address`,
		`UDPGATE_DENY: deny: "10.1.2.3/16" has bits set`,
		`UDPGATE_RATE: rate="-1"`,
		`UDPGATE_BURST: burst="x"`,
		`UDPGATE_SOURCE_PREFIX: source_prefix="32"`,
		`UDPGATE_LISTENER_RATE: listener_rate="fast"`,
		`UDPGATE_LISTENER_BURST: listener_burst="-3"`,
		`UDPGATE_AMPLIFICATION: amplification="1.5"`,
		`UDPGATE_LISTENERS: "9001/raw;colour=red": option "colour=red"`,
		`UDPGATE_LISTENERS: "9002/raw;rate=1;rate=2": option rate given twice`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "9000/raw") || strings.Contains(err.Error(), "UDPGATE_TRUST") {
		t.Errorf("good values reported:\n%v", err)
	}
}

func TestGuardListenerOptions(t *testing.T) {
	e := defaults(t)
	e.Deny = "192.0.2.0/24"
	e.Listeners = "9000/raw;rate=5;burst=7;allow=10.0.0.0/8 2001:db8::/32;amplification=0;source_prefix=24/48,9001/coap"
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := c.ListenerGuard(c.Listeners[0])
	if g.Rate != 5 || g.Burst != 7 || g.Factor != 0 || g.Prefix4 != 24 || g.Prefix6 != 48 ||
		len(g.Allow) != 2 || g.Allow[1] != netip.MustParsePrefix("2001:db8::/32") || len(g.Deny) != 1 {
		t.Errorf("9000/raw: %+v", g)
	}
	if g := c.ListenerGuard(c.Listeners[1]); g.Rate != 1000 || g.Factor != 3 || len(g.Allow) != 0 || len(g.Deny) != 1 {
		t.Errorf("9001/coap: %+v", g)
	}
	if c.Listeners[0].Addr.Port() != 9000 || c.Listeners[0].Protocol != "raw" {
		t.Errorf("listener %v", c.Listeners[0])
	}
}

func TestListenerListedTwiceWithOtherOptions(t *testing.T) {
	if _, err := ParseListeners("9000/raw;rate=1,9000/raw;rate=2"); err == nil || !strings.Contains(err.Error(), "already listed with other options") {
		t.Errorf("error %v", err)
	}
	if ls, err := ParseListeners("9000/raw;rate=1,9000/raw;rate=1"); err != nil || len(ls) != 1 {
		t.Errorf("identical entries: %v, %v", ls, err)
	}
}

func TestListenerReplyOff(t *testing.T) {
	ls, err := ParseListeners("9100/raw;reply=off,9000/raw;reply=on;rate=5,9001/raw")
	if err != nil {
		t.Fatal(err)
	}
	if got := []bool{ls[0].NoReply, ls[1].NoReply, ls[2].NoReply}; got[0] != true || got[1] || got[2] {
		t.Errorf("NoReply %v, want [true false false]", got)
	}
	for in, want := range map[string]string{
		"5683/coap;reply=off": "reply=off is for raw listeners",
		"7000/rpc;reply=off":  "reply=off is for raw listeners",
		"9100/raw;reply=no":   "want on or off",
		"9100/raw;reply":      "want KEY=VALUE",
	} {
		if _, err := ParseListeners(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", in, err, want)
		}
	}
}
