package config

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// defaults returns env as envconfig fills it with no UDPGATE_* variable
// set, and node n1.
func defaults(t *testing.T) env {
	t.Helper()
	for _, name := range KnownVariables() {
		t.Setenv(name, "") // restored after the test
		os.Unsetenv(name)
	}
	var e env
	if err := envconfig.Process(Prefix, &e); err != nil {
		t.Fatal(err)
	}
	e.Node = "n1"
	return e
}

func TestConfigDefaultsAreValid(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Deadline != 5*time.Second || c.StreamMaxBytes != 1<<30 || c.Prefix != "udpgate" || c.NATSListen.Port() != 4222 {
		t.Errorf("unexpected defaults: %+v", c)
	}
}

func TestConfigReportsEveryBadVariable(t *testing.T) {
	e := defaults(t)
	e.Listeners = "9000/raw,abc/raw,9002/udp,9003"
	e.NATSListen = "localhost"
	e.SubjectPrefix = "a..b"
	e.Stream = "UDP GATE"
	e.StreamMaxAge = "yesterday"
	e.StreamMaxBytes = "lots"
	e.StreamReplicas = "7"
	e.Deadline = "0s"
	e.MaxDatagram = "70000"
	e.LogLevel = "loud"
	e.CoAPBlockSize = "1000"
	e.CoAPMaxBody = "0"
	_, err := e.parse([]string{"UDPGATE_LISTENER=9000/raw", "PATH=/bin", "UDPGATE_NODE=x"})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`UDPGATE_LISTENERS: "abc/raw"`, `"9002/udp": unknown protocol "udp"`, `"9003": want [ADDR:]PORT/PROTOCOL`,
		"UDPGATE_NATS_LISTEN:", "UDPGATE_SUBJECT_PREFIX:", "UDPGATE_STREAM:", "UDPGATE_STREAM_MAX_AGE:",
		"UDPGATE_STREAM_MAX_BYTES:", "UDPGATE_STREAM_REPLICAS:", "UDPGATE_DEADLINE:", "UDPGATE_MAX_DATAGRAM:",
		"UDPGATE_LOG_LEVEL:", "UDPGATE_COAP_BLOCK_SIZE: 1000 is not a power of two", "UDPGATE_COAP_MAX_BODY:",
		`UDPGATE_LISTENERS: "9002/udp"`, "UDPGATE_LISTENER: not a udpgate variable (did you mean UDPGATE_LISTENERS?)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "UDPGATE_NODE:") || strings.Contains(msg, "PATH") {
		t.Errorf("error mentions a good variable:\n%s", msg)
	}
}

func TestConfigPiggybackShorterThanDeadline(t *testing.T) {
	e := defaults(t)
	e.CoAPPiggyback = "6s"
	_, err := e.parse(nil)
	if err == nil || !strings.Contains(err.Error(), "UDPGATE_COAP_PIGGYBACK: 6s is not shorter than UDPGATE_DEADLINE 5s") {
		t.Errorf("error %v", err)
	}
}

func TestParseListeners(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{"", nil, ""},
		{"9000/raw", []string{"0.0.0.0:9000/raw"}, ""},
		{" 9000/raw , 127.0.0.1:9001/raw,[::1]:9002/raw", []string{"0.0.0.0:9000/raw", "127.0.0.1:9001/raw", "[::1]:9002/raw"}, ""},
		{"9000/raw,9000/raw", []string{"0.0.0.0:9000/raw"}, ""},
		{"0/raw", nil, "port must be"},
		{"70000/raw", nil, "not IP:PORT"},
		{"5683/coap", []string{"0.0.0.0:5683/coap"}, ""},
		{"7000/rpc", []string{"0.0.0.0:7000/rpc"}, ""},
		{"9000/udp", nil, "unknown protocol"},
		{"9000/raw,9000/coap", nil, "already a raw listener"},
		{"host:9000/raw", nil, "not IP:PORT"},
		{"8080/ws", []string{"0.0.0.0:8080/ws"}, ""},
		{"127.0.0.1:8080/ws;path=/rpc", []string{"127.0.0.1:8080/ws"}, ""},
		{"8080/ws;path=rpc", nil, "want an absolute path"},
		{"8080/ws;rate=5;conn_rate=2.5;allow=10.0.0.0/8 127.0.0.1/32", []string{"0.0.0.0:8080/ws"}, ""},
		{"8080/ws;amplification=3", nil, "amplification= is for UDP listeners"},
		{"8080/ws;reply=off", nil, "reply= is for UDP listeners"},
		{"8080/ws;conn_rate=fast", nil, "conn_rate=\"fast\" is not a rate"},
		{"9000/raw;conn_rate=5", nil, "conn_rate= is for ws listeners"},
		{"8080/ws;path=/a;path=/b", nil, "option path given twice"},
		{"127.0.0.1:8443/wss;path=/rpc", []string{"127.0.0.1:8443/wss"}, ""},
		{"8443/wss,8443/ws", nil, "already listed with other options"},
		{"8443/wss;reply=off", nil, "reply= is for UDP listeners"},
		{"7000/rpc;path=/rpc", nil, "path"},
		{"7000/rpc,7000/ws", nil, "already a rpc listener"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ls, err := ParseListeners(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range ls {
				got = append(got, l.String())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWSListenerAndVariables(t *testing.T) {
	ls, err := ParseListeners("8080/ws;path=/rpc,8081/ws")
	if err != nil || len(ls) != 2 || ls[0].Path != "/rpc" || ls[1].Path != "/" || ls[0].Network() != "tcp4" {
		t.Fatalf("%+v, %v", ls, err)
	}
	e := defaults(t)
	e.WSOrigins = "example.com, *.example.org,https://app.example.net"
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := c.WS; len(w.Origins) != 3 || w.MaxConnections != 10000 || w.MaxInFlight != 64 || w.Ping != 30*time.Second || w.Idle != 10*time.Minute ||
		w.ConnectWait != 500*time.Millisecond || w.MaxPush != 64 {
		t.Errorf("ws defaults %+v", w)
	}
	e.WSOrigins, e.WSMaxConnections, e.WSMaxInFlight, e.WSPing, e.WSIdle = "[bad", "0", "x", "-1s", "soon"
	e.WSConnectWait, e.WSMaxPush, e.WSConnRate = "-2s", "0", "-1"
	_, err = e.parse(nil)
	for _, want := range []string{"UDPGATE_WS_ORIGINS:", "UDPGATE_WS_MAX_CONNECTIONS:", "UDPGATE_WS_MAX_INFLIGHT:", "UDPGATE_WS_PING:", "UDPGATE_WS_IDLE:", "UDPGATE_WS_CONNECT_WAIT:", "UDPGATE_WS_MAX_PUSH:", "UDPGATE_WS_CONN_RATE:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", -1, true}, {"-1", -1, true}, {"1024", 1024, true}, {"512MiB", 512 << 20, true},
		{"10GB", 10e9, true}, {"1 GiB", 1 << 30, true}, {"x", 0, false}, {"-2", 0, false}, {"9999999TiB", 0, false},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzParseListeners(f *testing.F) {
	for _, s := range []string{"9000/raw", "0.0.0.0:9001/raw,[::]:9002/raw", "/", ":/raw", "[::1/raw", "1/raw,1/raw",
		"5683/coap;rate=50;burst=100;allow=10.0.0.0/8 192.0.2.0/24", "1/raw;deny=::1;trust=127.0.0.0/8", "1/raw;rate", "1/raw;amplification=0;source_prefix=24/48", "1/raw;;",
		"9100/raw;reply=off", "5683/coap;reply=off", "1/raw;reply=on;reply=off"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ls, err := ParseListeners(s)
		if err != nil {
			return
		}
		for _, l := range ls {
			if l.Addr.Port() == 0 || l.Protocol == "" || (l.NoReply && l.Protocol != "raw") {
				t.Fatalf("%q parsed to %+v", s, l)
			}
		}
	})
}

// NATS_URL, the variable every NATS tool reads, is used when
// UDPGATE_NATS_URL is unset, and errors name the variable used.
func TestConfigNATSURLFallback(t *testing.T) {
	tests := []struct {
		environ      []string
		url, varName string
	}{
		{nil, "nats://127.0.0.1:4222", "UDPGATE_NATS_URL"},
		{[]string{"NATS_URL=nats://10.0.0.1:4222"}, "nats://10.0.0.1:4222", "NATS_URL"},
		{[]string{"NATS_URL=nats://10.0.0.1:4222", "UDPGATE_NATS_URL=nats://127.0.0.1:4222"}, "nats://127.0.0.1:4222", "UDPGATE_NATS_URL"},
		{[]string{"NATS_URL="}, "nats://127.0.0.1:4222", "UDPGATE_NATS_URL"},
	}
	for _, tt := range tests {
		c, err := defaults(t).parse(tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		if string(c.NATSURL) != tt.url || c.NATSURLVariable != tt.varName {
			t.Errorf("environ %q: NATSURL %s from %s, want %s from %s", tt.environ, string(c.NATSURL), c.NATSURLVariable, tt.url, tt.varName)
		}
	}
}

func TestConfigBuiltins(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
		bad  string
	}{
		{"echo,time,coap,places", []string{"echo", "time", "coap", "places"}, ""},
		{"off", nil, ""},
		{" coap , echo,coap", []string{"coap", "echo"}, ""},
		{"echo,ping", nil, `UDPGATE_BUILTINS: "ping" is not a built-in worker`},
		{"echo=19000,coap", []string{"echo", "coap"}, ""},
		{"places,places-ws=8090", []string{"places", "places-ws"}, ""},
		{"echo=0", nil, `UDPGATE_BUILTINS: "echo=0": the port of echo must be 1..65535`},
		{"echo=x", nil, `the port of echo must be 1..65535`},
	} {
		e := defaults(t)
		e.Builtins = tt.in
		c, err := e.parse(nil)
		if tt.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.bad)
			}
			continue
		}
		if err != nil || !slices.Equal(c.Builtins, tt.want) {
			t.Errorf("%q: %q, %v; want %q", tt.in, c.Builtins, err, tt.want)
		}
		if p := c.BuiltinPorts["echo"]; tt.in == "echo=19000,coap" && (p != 19000 || len(c.BuiltinPorts) != 1) {
			t.Errorf("%q: ports %v", tt.in, c.BuiltinPorts)
		}
	}
}

func TestConfigNode(t *testing.T) {
	e := defaults(t)
	e.Node = "gw 1/eu"
	if _, err := e.parse(nil); err == nil || !strings.Contains(err.Error(), `UDPGATE_NODE: "gw 1/eu" cannot name a node`) {
		t.Errorf("error %v", err)
	}
	e.Node = "gw-1.eu"
	if _, err := e.parse(nil); err != nil {
		t.Error(err)
	}
}

// UDPGATE_HTTP_LISTEN's default, auto, puts a gateway's endpoint where
// `udpgate status` looks and a worker's on any free port, so that workers
// and bridges start next to a gateway; an explicit address stays as set.
func TestConfigHTTPListenAuto(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPListen != HTTPAuto || c.ForGateway().HTTPListen != "127.0.0.1:9780" || c.ForWorker().HTTPListen != "127.0.0.1:0" {
		t.Errorf("auto: %q, gateway %q, worker %q", c.HTTPListen, c.ForGateway().HTTPListen, c.ForWorker().HTTPListen)
	}
	e := defaults(t)
	e.HTTPListen = ":9100"
	if c, err = e.parse(nil); err != nil || c.ForGateway().HTTPListen != ":9100" || c.ForWorker().HTTPListen != ":9100" {
		t.Errorf("explicit: %v, gateway %q, worker %q", err, c.ForGateway().HTTPListen, c.ForWorker().HTTPListen)
	}
	t.Setenv("UDPGATE_HTTP_LISTEN", "")
	os.Unsetenv("UDPGATE_HTTP_LISTEN")
	if l, err := GatewayHTTPListen(); err != nil || l != "127.0.0.1:9780" {
		t.Errorf("GatewayHTTPListen() = %q, %v", l, err)
	}
}

func TestWSSNeedsACertificate(t *testing.T) {
	e := defaults(t)
	e.Listeners = "8443/wss"
	if _, err := e.parse(nil); err == nil || !strings.Contains(err.Error(), "UDPGATE_WSS_CERT_FILE: a wss listener needs a certificate") {
		t.Errorf("a wss listener without a certificate: %v", err)
	}
	e.WSSCertFile = "cert.pem"
	if _, err := e.parse(nil); err == nil || !strings.Contains(err.Error(), "UDPGATE_WSS_KEY_FILE go together") {
		t.Errorf("a certificate without a key: %v", err)
	}
	e.WSSKeyFile = "key.pem"
	c, err := e.parse(nil)
	if err != nil || !c.Listeners[0].TLS || c.Listeners[0].Protocol != "ws" || c.WS.CertFile != "cert.pem" {
		t.Errorf("%+v, %v", c.Listeners, err)
	}
}

func TestDTLSListenersAndVariables(t *testing.T) {
	e := defaults(t)
	e.Listeners = "5684/coaps,9443/dtls"
	if _, err := e.parse(nil); err == nil || !strings.Contains(err.Error(), "UDPGATE_DTLS_PSK_FILE: a coaps or dtls listener needs keys or a certificate") {
		t.Errorf("DTLS listeners without keys or a certificate: %v", err)
	}
	dir := t.TempDir()
	psk, bad := dir+"/psk", dir+"/bad"
	os.WriteFile(psk, []byte("alice:secret\n"), 0o600)
	os.WriteFile(bad, []byte("alice\nbob:0xzz\n"), 0o600)
	e.DTLSPSKFile = bad
	e.DTLSCertFile = "cert.pem"
	e.DTLSClientCA = dir + "/none.pem"
	e.DTLSMaxSessions = "0"
	e.DTLSIdle = "never"
	e.DTLSHandshakeRate = "-1"
	e.DTLSHandshakeTimeout = "0s"
	_, err := e.parse(nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"UDPGATE_DTLS_PSK_FILE: " + bad + ": line 1: want IDENTITY:KEY; line 2: identity bob: the key after 0x is not hex",
		"UDPGATE_DTLS_CERT_FILE: and UDPGATE_DTLS_KEY_FILE go together", "UDPGATE_DTLS_CLIENT_CA:",
		"UDPGATE_DTLS_MAX_SESSIONS:", "UDPGATE_DTLS_IDLE:", "UDPGATE_DTLS_HANDSHAKE_RATE:", "UDPGATE_DTLS_HANDSHAKE_TIMEOUT:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	e = defaults(t)
	e.Listeners = "5684/coaps,127.0.0.1:9443/dtls;rate=5"
	e.DTLSPSKFile = psk
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Listeners[0]; l.Protocol != "coap" || !l.DTLS || l.String() != "0.0.0.0:5684/coaps" {
		t.Errorf("coaps listener %+v (%s)", l, l)
	}
	if l := c.Listeners[1]; l.Protocol != "raw" || !l.DTLS || l.String() != "127.0.0.1:9443/dtls" {
		t.Errorf("dtls listener %+v (%s)", l, l)
	}
	if c.DTLS.PSKFile != psk || c.DTLS.MaxSessions != 2048 || c.DTLS.Idle != 5*time.Minute || c.DTLS.HandshakeRate != 4 {
		t.Errorf("DTLS %+v", c.DTLS)
	}
	for _, entry := range []string{"9443/dtls;reply=off", "9443/dtls;push=on", "5684/coaps;path=/x"} {
		if _, err := ParseListeners(entry); err == nil {
			t.Errorf("%s: no error", entry)
		}
	}
}
