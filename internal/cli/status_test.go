package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/observe"
)

// status runs `udpgate status args...` and returns what it printed.
func status(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), append([]string{"status"}, args...), &out, &errb)
	if errb.Len() > 0 {
		t.Logf("status %v: stderr: %s", args, errb.String())
	}
	return out.String(), err
}

// TestStatusRun asks a real `udpgate run` who serves what, as a table
// and as JSON, with the URL given and derived from UDPGATE_HTTP_LISTEN.
func TestStatusRun(t *testing.T) {
	p := startRun(t)
	portOf := func(port uint16) string { return strconv.Itoa(int(port)) }

	// A CoAP request no group serves: answered 4.04 at once, counted.
	var o, e bytes.Buffer
	coapURL := "coap://" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.coap).String() + "/nothing"
	if err := Run(context.Background(), []string{"send", "-timeout", "10s", coapURL}, &o, &e); err == nil || !strings.Contains(err.Error()+e.String()+o.String(), "4.04") {
		t.Errorf("send %s: %v, printed %q %q; want a 4.04", coapURL, err, o.String(), e.String())
	}

	// JSON: the document decodes into gateway.Status.
	raw, err := status(t, "-url", p.http, "-json")
	if err != nil {
		t.Fatalf("status -json: %v", err)
	}
	var st gateway.Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("status -json printed what does not decode: %v\n%s", err, raw)
	}
	listener := func(port uint16, protocol string) gateway.ListenerStatus {
		t.Helper()
		name := portOf(port) + "/" + protocol
		for _, l := range st.Listeners {
			if l.Listener == name {
				return l
			}
		}
		t.Fatalf("no listener %s in %+v", name, st.Listeners)
		return gateway.ListenerStatus{}
	}
	group := func(l gateway.ListenerStatus, name string) gateway.Group {
		t.Helper()
		for _, g := range l.Groups {
			if g.Name == name {
				return g
			}
		}
		t.Fatalf("listener %s: no group %s in %+v", l.Listener, name, l.Groups)
		return gateway.Group{}
	}
	if st.Prefix != "udpgate" || st.Node == "" || st.DiscoveredAt.IsZero() {
		t.Errorf("status: node %q, prefix %q, discovered at %v", st.Node, st.Prefix, st.DiscoveredAt)
	}
	for _, c := range []struct {
		port             uint16
		protocol, worker string
	}{
		{p.echo, "raw", "echo"}, {p.time, "raw", "time"}, {p.coap, "coap", "coap"}, {p.rpc, "rpc", "places"},
	} {
		l := listener(c.port, c.protocol)
		if len(l.Groups) != 1 {
			t.Errorf("listener %s: groups %+v, want only %s", l.Listener, l.Groups, c.worker)
		}
		g := group(l, c.worker)
		if g.Delivery != "direct" || g.Instances != 1 || !g.Announced || len(g.Subjects) == 0 {
			t.Errorf("listener %s: group %+v, want one direct instance announced", l.Listener, g)
		}
		for _, s := range g.Subjects {
			if !strings.HasPrefix(s, l.Subject) {
				t.Errorf("listener %s (%s): group %s subject %s is another port's", l.Listener, l.Subject, g.Name, s)
			}
		}
	}
	coap := group(listener(p.coap, "coap"), "coap")
	wantLinks := []string{`</echo>;rt="echo"`, `</hello>;rt="hello";ct=0`, `</time>;obs;rt="time";ct=0`}
	if !slices.Equal(coap.Resources, wantLinks) {
		t.Errorf("coap resources %q, want %q", coap.Resources, wantLinks)
	}
	if l := listener(p.coap, "coap"); l.Unserved < 1 || l.Received < 1 {
		t.Errorf("coap listener: received %d, unserved %d; want the 4.04 counted", l.Received, l.Unserved)
	}
	if l := listener(p.extra, "raw"); len(l.Groups) != 0 {
		t.Errorf("extra listener: groups %+v, want none", l.Groups)
	}
	var names []string
	for _, g := range st.Groups {
		names = append(names, g.Name)
	}
	if want := []string{"coap", "echo", "places", "places-ws", "time"}; !slices.Equal(names, want) {
		t.Errorf("groups %v, want %v", names, want)
	}

	// The table, from the URL that UDPGATE_HTTP_LISTEN names.
	u, err := url.Parse(p.http)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("UDPGATE_HTTP_LISTEN", u.Host)
	table, err := status(t)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, want := range []string{
		"node " + st.Node + ", prefix udpgate: groups asked ",
		portOf(p.coap) + "/coap  ", "udpgate.in." + portOf(p.coap) + "  ",
		"resources: " + strings.Join(wantLinks, ","),
		"subjects: udpgate.in." + portOf(p.coap) + ".",
		portOf(p.rpc) + "/rpc  ", "subjects: udpgate.in." + portOf(p.rpc) + ".InterestingPlaces.GetRandom",
		portOf(p.echo) + "/raw  ", "subjects: udpgate.in." + portOf(p.echo) + "\n",
		portOf(p.time) + "/raw  ", portOf(p.extra) + "/raw  ",
		"no group serves this listener: requests are released at once, with no reply",
		"GROUP", "DELIVERY", "INSTANCES", "REQUESTS", "ERRORS", "AVERAGE", "KNOWN FROM", "UNSERVED", "NO_WORKER",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	for _, name := range []string{"echo", "time", "coap", "places"} {
		// GROUP DELIVERY INSTANCES REQUESTS ERRORS AVERAGE KNOWN FROM
		row := regexp.MustCompile(`(?m)^  ` + name + ` +direct +1 +\d+ +\d+ +\S+ +its announcement$`)
		if !row.MatchString(table) {
			t.Errorf("status table has no row for group %s, one direct instance:\n%s", name, table)
		}
	}
	// Every block names its listener before its groups.
	if i, j := strings.Index(table, portOf(p.coap)+"/coap"), strings.Index(table, "resources: "); i < 0 || j < i {
		t.Errorf("the coap group's resources come before its listener:\n%s", table)
	}
}

// TestStatusNotGateway asks a process whose HTTP endpoint has no status,
// as a worker's has not.
func TestStatusNotGateway(t *testing.T) {
	srv := &observe.Server{Registry: observe.NewRegistry()}
	ln, err := observe.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	base := observe.URL(ln)
	for _, flag := range []string{"-json", "-timeout=30s"} {
		out, err := status(t, "-url", base, flag)
		if err == nil || !strings.Contains(err.Error(), base+"/v1/status: this process is not a gateway (no /v1/status)") {
			t.Errorf("status %s: %v, want not a gateway", flag, err)
		}
		if out != "" {
			t.Errorf("status %s printed %q", flag, out)
		}
	}
}

// TestStatusUnreachable asks where nothing listens: the error names the
// URL and the flag or variable that chose it.
func TestStatusUnreachable(t *testing.T) {
	t.Setenv("UDPGATE_HTTP_LISTEN", "") // set below, restored after the test
	addr := "127.0.0.1:" + strconv.Itoa(int(freeTCPPort(t)))
	for _, tt := range []struct {
		name, env string
		args      []string
		want      []string
	}{
		{"flag", "", []string{"-url", "http://" + addr}, []string{"cannot connect to http://" + addr + "/v1/status", "check -url"}},
		{"flag without scheme", "", []string{"-url", addr + "/"}, []string{"cannot connect to http://" + addr + "/v1/status", "check -url"}},
		{"variable", addr, nil, []string{"cannot connect to http://" + addr + "/v1/status", "set UDPGATE_HTTP_LISTEN as the gateway has it, or pass -url"}},
		{"wildcard", "0.0.0.0:" + strings.TrimPrefix(addr, "127.0.0.1:"), nil, []string{"cannot connect to http://" + addr + "/v1/status"}},
		{"variable empty", "", nil, []string{"UDPGATE_HTTP_LISTEN is empty", "pass -url"}},
		{"free port", "127.0.0.1:0", nil, []string{"UDPGATE_HTTP_LISTEN is 127.0.0.1:0", "pass -url"}},
		{"bad variable", "nine", nil, []string{`UDPGATE_HTTP_LISTEN: "nine" is not HOST:PORT`}},
		{"bad flag", "", []string{"-url", "ftp://" + addr}, []string{`-url "ftp://` + addr + `" is not an http:// URL`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Setenv("UDPGATE_HTTP_LISTEN", tt.env)
			_, err := status(t, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if exitCode(err) != 1 {
				t.Errorf("exit code %d, want 1", exitCode(err))
			}
		})
	}
}

// TestStatusDefaultURL derives the gateway's URL from UDPGATE_HTTP_LISTEN
// as the gateway binds it.
func TestStatusDefaultURL(t *testing.T) {
	t.Setenv("UDPGATE_HTTP_LISTEN", "") // restored after the test
	for _, tt := range []struct {
		env  string
		set  bool
		want string
	}{
		{"", false, "http://127.0.0.1:9780"},
		{"auto", true, "http://127.0.0.1:9780"},
		{":9091", true, "http://127.0.0.1:9091"},
		{"0.0.0.0:9092", true, "http://127.0.0.1:9092"},
		{"[::]:9093", true, "http://127.0.0.1:9093"},
		{"[::1]:9094", true, "http://[::1]:9094"},
		{"localhost:9095", true, "http://localhost:9095"},
		{" 10.0.0.7:9096 ", true, "http://10.0.0.7:9096"},
	} {
		os.Unsetenv("UDPGATE_HTTP_LISTEN")
		if tt.set {
			os.Setenv("UDPGATE_HTTP_LISTEN", tt.env)
		}
		got, err := defaultStatusURL()
		if err != nil || got != tt.want {
			t.Errorf("UDPGATE_HTTP_LISTEN=%q: %q, %v; want %q", tt.env, got, err, tt.want)
		}
	}
	for in, want := range map[string]string{
		"http://127.0.0.1:9090":            "http://127.0.0.1:9090/v1/status",
		"127.0.0.1:9090":                   "http://127.0.0.1:9090/v1/status",
		"https://gw.example:8443/udpgate/": "https://gw.example:8443/udpgate/v1/status",
		"http://[::1]:9090/v1/status":      "http://[::1]:9090/v1/status",
	} {
		if got, err := statusEndpoint(in); err != nil || got != want {
			t.Errorf("statusEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
