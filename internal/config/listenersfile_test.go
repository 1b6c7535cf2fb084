package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseListenersFile(t *testing.T) {
	any4 := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.IPv4Unspecified(), port) }
	tests := []struct {
		name string
		file string
		want []Listener
	}{
		{name: "empty file"},
		{name: "comments only", file: "# nothing yet\n"},
		{name: "null list", file: "listeners:\n"},
		{name: "empty list", file: "listeners: []\n"},
		{name: "port alone is raw on every IPv4 address", file: "listeners:\n  - port: 9100\n",
			want: []Listener{{Addr: any4(9100), Protocol: "raw"}}},
		{name: "every key", file: `
listeners:
  - port: 9100
    protocol: raw
    address: 127.0.0.1
    reply: off
    push: on
    rate: 5
    burst: 7
    allow: [10.0.0.0/8, 2001:db8::/32]
    deny: 192.0.2.0/24 198.51.100.0/24
    trust: []
    source_prefix: [24, 48]
    listener_rate: 100
    listener_burst: 200
    amplification: 0
  - port: "5684"
    protocol: coap
    address: "::"
    push: off
  - port: 7001
    protocol: rpc
    address: "[::1]"
    reply: on
    push: false
`, want: []Listener{
			{Addr: netip.MustParseAddrPort("127.0.0.1:9100"), Protocol: "raw", NoReply: true, Push: true,
				Options: "reply=off;push=on;allow=10.0.0.0/8 2001:db8::/32;deny=192.0.2.0/24 198.51.100.0/24;trust=;rate=5;burst=7;source_prefix=24,48;listener_rate=100;listener_burst=200;amplification=0"},
			{Addr: netip.MustParseAddrPort("[::]:5684"), Protocol: "coap"},
			{Addr: netip.MustParseAddrPort("[::1]:7001"), Protocol: "rpc"},
		}},
		{name: "ws and wss", file: `
listeners:
  - port: 8081
    protocol: ws
  - port: 8443
    protocol: wss
    address: 127.0.0.1
    path: /rpc
    conn_rate: 20
    rate: 5
    allow: [10.0.0.0/8]
`, want: []Listener{
			{Addr: any4(8081), Protocol: "ws", Path: "/"},
			{Addr: netip.MustParseAddrPort("127.0.0.1:8443"), Protocol: "ws", Path: "/rpc", TLS: true,
				Options: "allow=10.0.0.0/8;rate=5;path=/rpc;conn_rate=20"},
		}},
		{name: "push true is push on", file: "listeners:\n  - {port: 9100, push: true}\n",
			want: []Listener{{Addr: any4(9100), Protocol: "raw", Push: true, Options: "push=on"}}},
		{name: "the order of keys does not matter", file: "listeners:\n  - {burst: 7, rate: 5, port: 9100}\n",
			want: []Listener{{Addr: any4(9100), Protocol: "raw", Options: "rate=5;burst=7"}}},
		{name: "an IPv4-mapped address is IPv4", file: "listeners:\n  - {port: 9100, address: \"::ffff:127.0.0.1\"}\n",
			want: []Listener{{Addr: netip.MustParseAddrPort("127.0.0.1:9100"), Protocol: "raw"}}},
		{name: "an alias", file: "listeners:\n  - {port: 9100, rate: &r 5}\n  - {port: 9101, rate: *r}\n",
			want: []Listener{{Addr: any4(9100), Protocol: "raw", Options: "rate=5"}, {Addr: any4(9101), Protocol: "raw", Options: "rate=5"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseListenersFile("l.yaml", []byte(tt.file), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("listeners\n%+v, want\n%+v", got, tt.want)
			}
			// The options read as UDPGATE_LISTENERS's would.
			for _, l := range got {
				if err := checkListenerOptions(l.Options); err != nil {
					t.Errorf("%s: options %q: %v", l, l.Options, err)
				}
			}
		})
	}
	t.Run("an alias repeats a port", func(t *testing.T) {
		_, err := ParseListenersFile("l.yaml", []byte("listeners:\n  - &a {port: 9100, rate: 5}\n  - *a\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "l.yaml:3: listeners[1]: port 9100 is listeners[0]'s already (line 2)") {
			t.Errorf("error %v", err)
		}
	})
}

// TestListenersFileOptionsAsEntries: an entry of the file has the guard
// that the same UDPGATE_LISTENERS entry would have.
func TestListenersFileOptionsAsEntries(t *testing.T) {
	e := defaults(t)
	e.Listeners = "9100/raw;rate=5;burst=7;allow=10.0.0.0/8 2001:db8::/32;amplification=0;source_prefix=24/48"
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := ParseListenersFile("l.yaml", []byte(`
listeners:
  - port: 9200
    amplification: 0
    allow:
      - 10.0.0.0/8
      - 2001:db8::/32
    source_prefix: 24,48
    burst: 7
    rate: 5
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if entry, file := c.ListenerGuard(c.Listeners[0]), c.ListenerGuard(ls[0]); !reflect.DeepEqual(entry, file) {
		t.Errorf("guard from the file\n%+v, from the entry\n%+v", file, entry)
	}
}

// TestListenersFilePushAsEntry: push: on in the file makes the listener
// that push=on in a UDPGATE_LISTENERS entry makes.
func TestListenersFilePushAsEntry(t *testing.T) {
	entries, err := ParseListeners("9100/raw;reply=off;push=on")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 9100, push: on, reply: off}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0] != entries[0] {
		t.Errorf("from the file %+v, from the entry %+v", ls, entries)
	}
}

// TestListenersFileWSAsEntries: a ws or wss listener of the file is the
// listener the same UDPGATE_LISTENERS entry makes, guard and connection
// rate included.
func TestListenersFileWSAsEntries(t *testing.T) {
	e := defaults(t)
	e.Listeners = "8081/ws;rate=5;allow=10.0.0.0/8;path=/rpc;conn_rate=20,127.0.0.1:8443/wss"
	e.WSSCertFile, e.WSSKeyFile = "cert.pem", "key.pem"
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := ParseListenersFile("l.yaml", []byte(`
listeners:
  - {port: 8081, protocol: ws, conn_rate: 20, path: /rpc, allow: [10.0.0.0/8], rate: 5}
  - {port: 8443, protocol: wss, address: 127.0.0.1}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		entry := c.Listeners[i]
		if l.String() != entry.String() || l.Path != entry.Path || l.TLS != entry.TLS {
			t.Errorf("listener %d from the file %+v, from the entry %+v", i, l, entry)
		}
		if entry, file := c.ListenerGuard(entry), c.ListenerGuard(l); !reflect.DeepEqual(entry, file) {
			t.Errorf("listener %d: guard from the file\n%+v, from the entry\n%+v", i, file, entry)
		}
		if entry, file := c.ConnRate(entry), c.ConnRate(l); entry != file {
			t.Errorf("listener %d: conn_rate from the file %v, from the entry %v", i, file, entry)
		}
	}
}

// TestListenersFileErrors: a bad file is refused as a whole, and the
// error names every problem with its line and listener.
func TestListenersFileErrors(t *testing.T) {
	taken, err := ParseListeners("9000/raw,127.0.0.1:5683/coap")
	if err != nil {
		t.Fatal(err)
	}
	file := `listeners:
  - port: 9100
    protocol: raw
  - port: 70000
  - port: 9101
    protocol: quic
  - port: 9102
    colour: red
  - port: 9103
    rate: fast
    deny: 10.0.0.0/8 nope
  - protocol: coap
  - port: 9100
  - port: 9000
  - port: 5683
    protocol: coap
  - port: 7002
    protocol: rpc
    reply: off
  - port: 9104
    rate: 1
    rate: 2
  - port: 9105
    address: somewhere
  - port: 9106
    burst: "5;deny=0.0.0.0/0"
  - 9107/raw
  - port: 9108
    allow: {a: b}
  - port: 9109
    reply: maybe
  - port: 9110
    source_prefix: [32]
  - port: 9111
    rate:
  - port: 9112
    protocol: ws
    trust: [10.0.0.0/8]
    amplification: 3
    reply: off
  - port: 9113
    path: /rpc
    conn_rate: 5
  - port: 9114
    protocol: wss
    path: rpc
    conn_rate: lots
  - port: 9115
    protocol: coap
    push: on
  - port: 9116
    push: maybe
  - port: 9117
    protocol: ws
    push: on
version: 2
`
	_, err = ParseListenersFile("/etc/l.yaml", []byte(file), taken)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a *config.Error", err)
	}
	want := []string{
		`/etc/l.yaml:4: listeners[1]: port "70000" is not 1..65535`,
		`/etc/l.yaml:6: listeners[2]: unknown protocol "quic"`,
		`/etc/l.yaml:8: listeners[3]: unknown key "colour"`,
		`/etc/l.yaml:10: listeners[4]: rate="fast" is not a rate`,
		`/etc/l.yaml:11: listeners[4]: deny: "nope" is not an address`,
		`/etc/l.yaml:12: listeners[5]: port is missing`,
		`/etc/l.yaml:13: listeners[6]: port 9100 is listeners[0]'s already (line 2)`,
		`/etc/l.yaml:14: listeners[7]: port 9000 is served by 0.0.0.0:9000/raw already`,
		`/etc/l.yaml:15: listeners[8]: port 5683 is served by 127.0.0.1:5683/coap already`,
		`/etc/l.yaml:19: listeners[9]: reply: off is for raw listeners`,
		`/etc/l.yaml:22: listeners[10]: rate given twice (first on line 21)`,
		`/etc/l.yaml:24: listeners[11]: address "somewhere" is not an IPv4 or IPv6 address`,
		`/etc/l.yaml:26: listeners[12]: burst: "5;deny=0.0.0.0/0" holds a ;`,
		`/etc/l.yaml:27: listeners[13]: want a mapping`,
		`/etc/l.yaml:29: listeners[14]: allow: want a value, not a mapping`,
		`/etc/l.yaml:31: listeners[15]: reply "maybe": want on or off`,
		`/etc/l.yaml:33: listeners[16]: source_prefix="32" is not V4,V6 prefix lengths`,
		`/etc/l.yaml:35: listeners[17]: rate: no value`,
		`/etc/l.yaml:38: listeners[18]: trust is for UDP listeners (a ws listener's calls come over TCP)`,
		`/etc/l.yaml:39: listeners[18]: amplification is for UDP listeners`,
		`/etc/l.yaml:40: listeners[18]: reply is for UDP listeners`,
		`/etc/l.yaml:42: listeners[19]: path is for ws and wss listeners`,
		`/etc/l.yaml:43: listeners[19]: conn_rate is for ws and wss listeners`,
		`/etc/l.yaml:46: listeners[20]: path "rpc": want an absolute path like /rpc`,
		`/etc/l.yaml:47: listeners[20]: conn_rate="lots" is not a rate`,
		`/etc/l.yaml:50: listeners[21]: push: on is for raw listeners`,
		`/etc/l.yaml:52: listeners[22]: push "maybe": want on or off`,
		`/etc/l.yaml:55: listeners[23]: push is for UDP listeners`,
		`/etc/l.yaml:56: unknown key "version": the file has one key, listeners`,
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), "UDPGATE_LISTENERS_FILE: "+w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(want), err)
	}
	if strings.Contains(err.Error(), "listeners[0]:") {
		t.Errorf("the good listener reported:\n%v", err)
	}
}

func TestListenersFileNotYAML(t *testing.T) {
	for name, file := range map[string]string{
		"syntax":        "listeners: [port: 9100\n",
		"tabs":          "listeners:\n\t- port: 9100\n",
		"a list":        "- port: 9100\n",
		"a scalar":      "9100/raw\n",
		"two documents": "listeners: []\n---\nlisteners: []\n",
		"not a list":    "listeners: 9100/raw\n",
		"twice":         "listeners: []\nlisteners: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseListenersFile("l.yaml", []byte(file), nil); err == nil || !strings.Contains(err.Error(), "UDPGATE_LISTENERS_FILE: l.yaml") {
				t.Errorf("error %v", err)
			}
		})
	}
}

func TestReadListenersFile(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := ReadListenersFile(filepath.Join(dir, "missing.yaml"), nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("listeners: []\n"+strings.Repeat("#", MaxListenersFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadListenersFile(big, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("file too large: %v", err)
	}
	good := filepath.Join(dir, "l.yaml")
	if err := os.WriteFile(good, []byte("listeners:\n  - port: 9100\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ls, data, err := ReadListenersFile(good, nil); err != nil || len(ls) != 1 || ls[0].String() != "0.0.0.0:9100/raw" || string(data) != "listeners:\n  - port: 9100\n" {
		t.Errorf("ReadListenersFile: %v, %q, %v", ls, data, err)
	}
}

func FuzzParseListenersFile(f *testing.F) {
	f.Add([]byte("listeners:\n  - port: 9100\n    rate: 5\n    allow: [10.0.0.0/8]\n"))
	f.Add([]byte("listeners:\n  - &a {port: 9100}\n  - *a\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("listeners: [{port: 1, reply: off, protocol: coap}, 7]\n---\n"))
	f.Add([]byte("listeners:\n  - {port: 8081, protocol: wss, path: /rpc, conn_rate: 2, rate: 1}\n"))
	f.Add([]byte("listeners:\n  - {port: 9100, push: on, reply: off}\n  - {port: 5684, protocol: coap, push: on}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ls, err := ParseListenersFile("f.yaml", data, nil)
		if err != nil {
			if ls != nil {
				t.Errorf("listeners %v with error %v", ls, err)
			}
			return
		}
		ports := map[uint16]bool{}
		for _, l := range ls {
			if l.Addr.Port() == 0 || ports[l.Addr.Port()] {
				t.Errorf("listener %v: port zero or twice", l)
			}
			ports[l.Addr.Port()] = true
			if err := checkListenerOptions(l.Options); err != nil {
				t.Errorf("listener %v: options %q: %v", l, l.Options, err)
			}
		}
	})
}

// TestListenersFileDTLSAsEntries: a coaps or dtls listener of the file is
// the listener the same UDPGATE_LISTENERS entry makes; reply: off and
// push: on are refused on it.
func TestListenersFileDTLSAsEntries(t *testing.T) {
	entries, err := ParseListeners("5684/coaps,127.0.0.1:9443/dtls")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 5684, protocol: coaps}\n  - {port: 9443, address: 127.0.0.1, protocol: dtls}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0] != entries[0] || ls[1] != entries[1] {
		t.Errorf("from the file %+v, from the entries %+v", ls, entries)
	}
	_, err = ParseListenersFile("l.yaml", []byte("listeners:\n  - {port: 9443, protocol: dtls, push: on}\n  - {port: 9444, protocol: dtls, reply: off}\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "push: on is not for dtls listeners") || !strings.Contains(err.Error(), "reply: off is not for dtls listeners") {
		t.Errorf("push and reply on dtls listeners: %v", err)
	}
}
