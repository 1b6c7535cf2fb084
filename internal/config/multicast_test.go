package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGroupOption(t *testing.T) {
	ls, err := ParseListeners("5683/coap;group=224.0.1.187%eth0 224.0.0.251,[::]:5684/coap;group=ff02::fd%veth0 ff05::fd,9000/raw;df=on,9001/raw;df=off")
	if err != nil {
		t.Fatal(err)
	}
	want := [][]Group{
		{{netip.MustParseAddr("224.0.1.187"), "eth0"}, {netip.MustParseAddr("224.0.0.251"), ""}},
		{{netip.MustParseAddr("ff02::fd"), "veth0"}, {netip.MustParseAddr("ff05::fd"), ""}},
		nil, nil,
	}
	for i, l := range ls {
		if got := l.Groups(); !slices.Equal(got, want[i]) {
			t.Errorf("%s: groups %v, want %v", l, got, want[i])
		}
	}
	if got := []bool{ls[0].DontFragment, ls[2].DontFragment, ls[3].DontFragment}; got[0] || !got[1] || got[2] {
		t.Errorf("DontFragment %v, want [false true false]", got)
	}
	for entry, want := range map[string]string{
		"5683/coap;group=10.0.0.1":                    "not a multicast address",
		"5683/coap;group=":                            "no group given",
		"5683/coap;group=224.0.1.187%a/b":             "not an interface name",
		"[::]:5683/coap;group=ff02::fd":               "a link-local group needs its interface",
		"127.0.0.1:5683/coap;group=224.0.1.187":       "wildcard address",
		"[::]:5683/coap;group=224.0.1.187":            "not of the listener's address family",
		"5683/coap;group=ff05::fd":                    "not of the listener's address family",
		"7000/rpc;group=224.0.1.187":                  "group= is for raw and coap listeners",
		"8080/ws;group=224.0.1.187":                   "group= is for UDP listeners",
		"5684/coaps;group=224.0.1.187":                "not for DTLS listeners",
		"9000/raw;df=yes":                             "want on or off",
		"8080/ws;df=on":                               "df= is for UDP listeners",
		"5683/coap;group=224.0.1.187;group=224.0.0.1": "given twice",
	} {
		if _, err := ParseListeners(entry); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", entry, err, want)
		}
	}
}

func TestCoAPLeisure(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.CoAPLeisure != 5*time.Second {
		t.Errorf("leisure %s, want RFC 7252's 5s", c.CoAPLeisure)
	}
	e := defaults(t)
	e.CoAPLeisure = "soon"
	if _, err := e.parse(nil); err == nil || !strings.Contains(err.Error(), "COAP_LEISURE") {
		t.Errorf("bad UDPGATE_COAP_LEISURE not reported: %v", err)
	}
}

// TestListenersFileGroupAsEntry: group and df in the listener file make
// the listener the same UDPGATE_LISTENERS entry makes; a group on an rpc
// listener is refused with its line.
func TestListenersFileGroupAsEntry(t *testing.T) {
	entries, err := ParseListeners("5683/coap;group=224.0.1.187%eth0 224.0.0.251;df=on")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 5683, protocol: coap, group: [224.0.1.187%eth0, 224.0.0.251], df: on}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0] != entries[0] || len(ls[0].Groups()) != 2 || !ls[0].DontFragment {
		t.Errorf("from the file %+v, from the entry %+v", ls, entries)
	}
	_, err = ParseListenersFile("l.yaml", []byte("listeners:\n  - port: 7000\n    protocol: rpc\n    group: 224.0.1.187\n  - port: 9000\n    df: maybe\n"), nil)
	for _, want := range []string{"group= is for raw and coap listeners", `df "maybe": want on or off`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v, want %q", err, want)
		}
	}
}
