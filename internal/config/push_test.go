package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestPushVariables(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Push.Window != 5*time.Minute || c.Push.Rate != 10 || len(c.Push.Allow) != 0 {
		t.Errorf("push defaults %+v", c.Push)
	}
	e := defaults(t)
	e.PushWindow, e.PushAllow, e.PushRate = "30s", "192.0.2.0/24, 2001:db8::/32", "0"
	if c, err = e.parse(nil); err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	if c.Push.Window != 30*time.Second || c.Push.Rate != 0 || len(c.Push.Allow) != 2 || c.Push.Allow[0] != want[0] || c.Push.Allow[1] != want[1] {
		t.Errorf("push %+v", c.Push)
	}
	e.PushWindow, e.PushAllow, e.PushRate = "10ms", "192.0.2.1/33", "fast"
	_, err = e.parse(nil)
	for _, name := range []string{"PUSH_WINDOW", "PUSH_ALLOW", "PUSH_RATE"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("bad UDPGATE_%s not reported: %v", name, err)
		}
	}
}

func TestPushOption(t *testing.T) {
	ls, err := ParseListeners("9000/raw;push=on,9001/raw;push=off,9002/raw;reply=off;push=on,9003/raw")
	if err != nil {
		t.Fatal(err)
	}
	if got := []bool{ls[0].Push, ls[1].Push, ls[2].Push, ls[3].Push}; !got[0] || got[1] || !got[2] || got[3] {
		t.Errorf("Push %v, want [true false true false]", got)
	}
	if !ls[2].NoReply {
		t.Error("reply=off lost beside push=on")
	}
	for entry, want := range map[string]string{
		"5683/coap;push=on": "push=on is for raw listeners",
		"7000/rpc;push=on":  "push=on is for raw listeners",
		"8080/ws;push=on":   "push= is for UDP listeners",
		"9000/raw;push=yes": "want on or off",
	} {
		if _, err := ParseListeners(entry); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", entry, err, want)
		}
	}
}
