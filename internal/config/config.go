package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// env is the environment as envconfig reads it: every UDPGATE_* variable as
// text, with its default. parse turns it into a config, checking every
// variable and reporting every problem at once.
type env struct {
	NATSURL                string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server(s) for gateway, worker (comma-separated URLs)"`
	NATSUser               string `envconfig:"NATS_USER" desc:"NATS user name, with UDPGATE_NATS_PASSWORD"`
	NATSPassword           string `envconfig:"NATS_PASSWORD" desc:"NATS password of UDPGATE_NATS_USER (never printed)"`
	NATSToken              string `envconfig:"NATS_TOKEN" desc:"NATS authentication token (never printed)"`
	NATSNkey               string `envconfig:"NATS_NKEY" desc:"file holding the NATS nkey user seed to authenticate with"`
	NATSCreds              string `envconfig:"NATS_CREDS" desc:"NATS credentials file (user JWT and seed, as nsc writes it)"`
	NATSCA                 string `envconfig:"NATS_CA" desc:"PEM file of the CA that verifies the NATS server's certificate (turns TLS on)"`
	NATSCert               string `envconfig:"NATS_CERT" desc:"PEM client certificate for NATS TLS, with UDPGATE_NATS_KEY"`
	NATSKey                string `envconfig:"NATS_KEY" desc:"PEM private key of UDPGATE_NATS_CERT"`
	NATSInbox              string `envconfig:"NATS_INBOX_PREFIX" desc:"prefix of this process's NATS reply inboxes (default: _INBOX), for per-user permissions"`
	Node                   string `envconfig:"NODE" desc:"name of this gateway node (default: host name)"`
	Listeners              string `envconfig:"LISTENERS" desc:"listeners, comma-separated [ADDR:]PORT/PROTOCOL"`
	Builtins               string `envconfig:"BUILTINS" default:"echo,time,coap,places,places-ws" desc:"run: the built-in workers, each on its listener (echo 9000/raw, time 9001/raw, coap 5683/coap, places 7000/rpc, places-ws: places on 8080/ws), comma-separated; NAME=PORT moves one (echo=19000); off: none"`
	DataDir                string `envconfig:"DATA_DIR" default:"./udpgate-data" desc:"JetStream store of the embedded NATS server (run)"`
	NATSListen             string `envconfig:"NATS_LISTEN" default:"127.0.0.1:4222" desc:"where the embedded NATS server accepts clients (run)"`
	SubjectPrefix          string `envconfig:"SUBJECT_PREFIX" default:"udpgate" desc:"first token of every subject"`
	Stream                 string `envconfig:"STREAM" default:"UDPGATE_IN" desc:"capture stream name"`
	StreamMaxAge           string `envconfig:"STREAM_MAX_AGE" default:"24h" desc:"capture kept this long (0: forever)"`
	StreamMaxBytes         string `envconfig:"STREAM_MAX_BYTES" default:"1GiB" desc:"capture size limit (0: none)"`
	StreamReplicas         string `envconfig:"STREAM_REPLICAS" default:"1" desc:"capture stream replicas"`
	StreamStorage          string `envconfig:"STREAM_STORAGE" default:"file" desc:"capture and replies storage, file or memory"`
	StreamPersist          string `envconfig:"STREAM_PERSIST" default:"sync" desc:"how file storage writes messages: sync (each before its acknowledgement) or async (in batches, after it)"`
	RepliesStream          string `envconfig:"REPLIES_STREAM" default:"UDPGATE_REPLIES" desc:"stream recording workers' replies, same limits as the capture (\"off\": none)"`
	Deadline               string `envconfig:"DEADLINE" default:"5s" desc:"how long a request waits for its reply"`
	DiscoveryInterval      string `envconfig:"DISCOVERY_INTERVAL" default:"2s" desc:"how often the gateway asks worker groups what they serve; a stopped instance is forgotten after two intervals"`
	DrainTimeout           string `envconfig:"DRAIN_TIMEOUT" default:"0" desc:"how long a stopping gateway goes on answering its pending exchanges after it stops reading (0: UDPGATE_DEADLINE plus 1s)"`
	Handover               string `envconfig:"HANDOVER" desc:"a Unix socket path where udpgate gateway offers its sockets to a new process on the same host, and where a new one looks for them: an upgrade or restart loses no datagram (empty: off)"`
	DiscoverySubscriptions string `envconfig:"DISCOVERY_SUBSCRIPTIONS" default:"on" desc:"on: the gateway also asks the NATS servers for the subscriptions to request subjects, so groups that announce nothing are listed; off: announcements only"`
	MaxDatagram            string `envconfig:"MAX_DATAGRAM" default:"8192" desc:"largest datagram accepted, bytes"`
	MaxPending             string `envconfig:"MAX_PENDING" default:"65536" desc:"open exchanges per node"`
	ListenerMaxPending     string `envconfig:"LISTENER_MAX_PENDING" default:"0" desc:"open exchanges one listener may hold, a number or a percentage of UDPGATE_MAX_PENDING like 25% (0: half, or all on a node with one answering listener)"`
	Queue                  string `envconfig:"QUEUE" default:"8192" desc:"datagrams queued for publishing, per listener"`
	MaxInFlight            string `envconfig:"MAX_INFLIGHT" default:"16384" desc:"capture copies awaiting JetStream's acknowledgement, per listener"`
	RcvBuf                 string `envconfig:"RCVBUF" default:"0" desc:"SO_RCVBUF per listener socket, bytes (0: system default)"`
	Delivery               string `envconfig:"DELIVERY" default:"direct" desc:"how worker and lambda groups receive requests: direct (a core NATS queue group) or durable (a JetStream consumer)"`
	WorkerGroup            string `envconfig:"WORKER_GROUP" desc:"worker group name (default: the worker's name)"`
	WorkerSubjects         string `envconfig:"WORKER_SUBJECTS" desc:"subjects a worker consumes, comma-separated (default: its built-in listener's)"`
	WorkerConcurrency      string `envconfig:"WORKER_CONCURRENCY" default:"16" desc:"handlers running at once per worker instance"`
	WorkerBacklog          string `envconfig:"WORKER_BACKLOG" default:"4096" desc:"direct: requests a worker instance holds waiting for a handler; more are dropped and counted"`
	AckWait                string `envconfig:"ACK_WAIT" default:"2s" desc:"durable: redelivery delay of a request whose worker died"`
	LogLevel               string `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat              string `envconfig:"LOG_FORMAT" default:"auto" desc:"text, json or auto (text on a terminal, else JSON)"`
	HTTPListen             string `envconfig:"HTTP_LISTEN" default:"auto" desc:"HOST:PORT of /metrics, /healthz, /readyz and /v1/status (auto: 127.0.0.1:9780 for run and gateway, a free port on 127.0.0.1 for worker and lambda, logged; empty: none)"`
	CoAPPiggyback          string `envconfig:"COAP_PIGGYBACK" default:"500ms" desc:"how long a CON request waits for its worker before an empty ACK"`
	CoAPBlockSize          string `envconfig:"COAP_BLOCK_SIZE" default:"1024" desc:"largest block of a block-wise CoAP response (16, 32, ... 1024)"`
	CoAPMaxBody            string `envconfig:"COAP_MAX_BODY" default:"64KiB" desc:"largest CoAP request reassembled from Block1 transfers"`
	CoAPObserveCONEvery    string `envconfig:"COAP_OBSERVE_CON_EVERY" default:"20" desc:"CoAP Observe: at least every how many notifications to an observer one goes as a CON (and at least every 24 hours)"`
	CoAPMaxObservers       string `envconfig:"COAP_MAX_OBSERVERS" default:"10000" desc:"CoAP Observe registrations one coap listener keeps; one beyond is answered without Observe"`
	CoAPMaxObserversPeer   string `envconfig:"COAP_MAX_OBSERVERS_PER_PEER" default:"64" desc:"CoAP Observe registrations one client address may hold on a coap listener"`
	ObserveBucket          string `envconfig:"OBSERVE_BUCKET" default:"udpgate_observe" desc:"CoAP Observe: the JetStream key-value bucket of every node's registrations, read back by a gateway restarted with the same UDPGATE_NODE (off: in memory only)"`
	ObserveReplicas        string `envconfig:"OBSERVE_REPLICAS" default:"0" desc:"replicas of UDPGATE_OBSERVE_BUCKET (0: as UDPGATE_STREAM_REPLICAS)"`
	ObserveTTL             string `envconfig:"OBSERVE_TTL" default:"1h" desc:"how long a registration stays in UDPGATE_OBSERVE_BUCKET unless its node writes it again, which it does every quarter of it"`
	CoAPLeisure            string `envconfig:"COAP_LEISURE" default:"5s" desc:"coap listeners that join groups (group=): the response to a multicast request is sent after a random delay up to this (RFC 7252 Leisure)"`
	Allow                  string `envconfig:"ALLOW" desc:"source prefixes admitted, comma-separated CIDR (empty: all)"`
	Deny                   string `envconfig:"DENY" desc:"source prefixes dropped, comma-separated CIDR; wins over UDPGATE_ALLOW"`
	Trust                  string `envconfig:"TRUST" desc:"source prefixes exempt from the amplification limit, comma-separated CIDR"`
	Rate                   string `envconfig:"RATE" default:"1000" desc:"datagrams per second per source prefix, per listener (0: no limit)"`
	Burst                  string `envconfig:"BURST" default:"2000" desc:"datagrams a source prefix may send at once (0: twice UDPGATE_RATE)"`
	SourcePrefix           string `envconfig:"SOURCE_PREFIX" default:"32,64" desc:"IPv4,IPv6 prefix lengths that share a source's rate limit"`
	ListenerRate           string `envconfig:"LISTENER_RATE" default:"0" desc:"datagrams per second per listener from all sources (0: no limit)"`
	ListenerBurst          string `envconfig:"LISTENER_BURST" default:"0" desc:"datagrams a listener accepts at once (0: twice UDPGATE_LISTENER_RATE)"`
	Amplification          string `envconfig:"AMPLIFICATION" default:"3" desc:"replies to unvalidated sources are at most this many times the request, as IP packets (0: no limit)"`
	LambdaFunction         string `envconfig:"LAMBDA_FUNCTION" desc:"lambda: the function to invoke (name, ARN or alias)"`
	LambdaSubjects         string `envconfig:"LAMBDA_SUBJECTS" desc:"lambda: subjects the bridge consumes, comma-separated"`
	LambdaGroup            string `envconfig:"LAMBDA_GROUP" desc:"lambda: worker group (default: lambda-FUNCTION)"`
	LambdaConc             string `envconfig:"LAMBDA_CONCURRENCY" default:"16" desc:"lambda: invocations in flight at most"`
	LambdaTimeout          string `envconfig:"LAMBDA_TIMEOUT" default:"3s" desc:"lambda: how long one invocation may take before it is retried"`
	LambdaEvent            string `envconfig:"LAMBDA_EVENT" default:"native" desc:"lambda: event shape, native or batch"`
	LambdaBatch            string `envconfig:"LAMBDA_BATCH_SIZE" default:"10" desc:"lambda: requests per batch invocation (batch)"`
	LambdaWindow           string `envconfig:"LAMBDA_BATCH_WINDOW" default:"20ms" desc:"lambda: how long a batch waits to fill (batch)"`
	LambdaEndpoint         string `envconfig:"LAMBDA_ENDPOINT" desc:"lambda: endpoint URL for a local emulator (AWS_ENDPOINT_URL_LAMBDA works too)"`
	TraceSample            string `envconfig:"TRACE_SAMPLE" default:"0" desc:"share of requests the gateway traces, 0 to 1 (0: none); spans go by OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (docs/tracing.md)"`
	ListenersFile          string `envconfig:"LISTENERS_FILE" desc:"a YAML file of more listeners, read at start and again on SIGHUP and when it changes: listeners are added and removed without a restart (docs/operations.md)"`
	BridgePorts            string `envconfig:"BRIDGE_PORTS" desc:"leased listeners: the host ports a lease may bind, comma-separated PORT or LOW-HIGH ranges (like 20000-20999); empty: no leases"`
	BridgeToken            string `envconfig:"BRIDGE_TOKEN" desc:"leased listeners over HTTP (/v1/udp/...): the bearer token callers must send (never printed); empty: HTTP leases are off, NATS ones follow NATS permissions"`
	BridgeMaxBindings      string `envconfig:"BRIDGE_MAX_BINDINGS" default:"64" desc:"leased listeners alive at once on this node"`
	BridgeSendAllow        string `envconfig:"BRIDGE_SEND_ALLOW" desc:"destinations a lease may send to besides the addresses that sent to it, comma-separated CIDR"`
	WSOrigins              string `envconfig:"WS_ORIGINS" desc:"ws listeners: origins allowed besides the page's own host, comma-separated patterns (example.com, *.example.com, https://app.example.com; *: any); empty: same origin only (clients without Origin, not browsers, are always accepted)"`
	WSMaxConnections       string `envconfig:"WS_MAX_CONNECTIONS" default:"10000" desc:"ws listeners: open WebSocket connections per listener; more are refused (503)"`
	WSMaxInFlight          string `envconfig:"WS_MAX_INFLIGHT" default:"64" desc:"ws listeners: calls of one connection awaiting their reply; more are answered STATUS_RESOURCE_EXHAUSTED"`
	WSPing                 string `envconfig:"WS_PING" default:"30s" desc:"ws listeners: how often a connection is pinged; one whose pong does not come as soon is closed (0: no pings)"`
	WSIdle                 string `envconfig:"WS_IDLE" default:"10m" desc:"ws listeners: a connection that sent no message for this long is closed (0: never)"`
	WSConnectWait          string `envconfig:"WS_CONNECT_WAIT" default:"500ms" desc:"ws listeners: how long a new connection waits for a reply to its $connect event, which may refuse it (0: $connect is published, not waited for; no subscriber: no wait)"`
	WSSCertFile            string `envconfig:"WSS_CERT_FILE" desc:"wss listeners: the certificate chain, PEM; loaded again when it changes"`
	WSSKeyFile             string `envconfig:"WSS_KEY_FILE" desc:"wss listeners: the private key of UDPGATE_WSS_CERT_FILE, PEM"`
	WSConnRate             string `envconfig:"WS_CONN_RATE" default:"0" desc:"ws listeners: messages per second one connection may send, in bursts of twice that; a call beyond is answered STATUS_RESOURCE_EXHAUSTED (0: no limit; the guard's per-source UDPGATE_RATE applies too)"`
	WSMaxPush              string `envconfig:"WS_MAX_PUSH" default:"64" desc:"ws listeners: messages pushed to one connection and not yet written; a push beyond closes the connection (a client too slow to read)"`
	PushWindow             string `envconfig:"PUSH_WINDOW" default:"5m" desc:"push=on raw listeners: how long after its last datagram a source may be sent unsolicited datagrams (PREFIX.out.NODE.PORT), and the window of their amplification limit"`
	PushAllow              string `envconfig:"PUSH_ALLOW" desc:"push=on raw listeners: destinations that may be pushed to without having sent, comma-separated CIDR (the rate and amplification limit still apply)"`
	PushRate               string `envconfig:"PUSH_RATE" default:"10" desc:"push=on raw listeners: datagrams per second pushed to one destination, in bursts of twice that (0: no limit)"`
	DTLSPSKFile            string `envconfig:"DTLS_PSK_FILE" desc:"coaps and dtls listeners: pre-shared keys, IDENTITY:KEY lines (KEY as text or 0x hex; # comments), read again when the file changes"`
	DTLSCertFile           string `envconfig:"DTLS_CERT_FILE" desc:"coaps and dtls listeners: the server's certificate chain, PEM, with UDPGATE_DTLS_KEY_FILE; loaded again when it changes"`
	DTLSKeyFile            string `envconfig:"DTLS_KEY_FILE" desc:"coaps and dtls listeners: the private key of UDPGATE_DTLS_CERT_FILE, PEM"`
	DTLSClientCA           string `envconfig:"DTLS_CLIENT_CA" desc:"coaps and dtls listeners: PEM CA certificates; a client using a certificate suite must present a certificate they verify (PSK clients authenticate by their key)"`
	DTLSMaxSessions        string `envconfig:"DTLS_MAX_SESSIONS" default:"2048" desc:"coaps and dtls listeners: DTLS sessions per listener, handshakes included; a ClientHello beyond is dropped"`
	DTLSIdle               string `envconfig:"DTLS_IDLE" default:"5m" desc:"coaps and dtls listeners: a session that sends nothing for this long is closed"`
	DTLSHandshakeRate      string `envconfig:"DTLS_HANDSHAKE_RATE" default:"4" desc:"coaps and dtls listeners: new handshakes per second one source address may start, in bursts of twice that (0: no limit)"`
	DTLSHandshakeTimeout   string `envconfig:"DTLS_HANDSHAKE_TIMEOUT" default:"10s" desc:"coaps and dtls listeners: how long a handshake may take"`
	BridgeSendRate         string `envconfig:"BRIDGE_SEND_RATE" default:"1000" desc:"datagrams per second one lease may send (bursts of twice that; 0: no limit)"`
}

// Config is the validated configuration.
type Config struct {
	NATSURL URLs
	// NATSURLVariable names where NATSURL came from: UDPGATE_NATS_URL, or
	// NATS_URL (the variable every NATS tool reads) when that is unset.
	NATSURLVariable        string
	NATSAuth               NATSAuth // credentials and TLS of every NATS connection (not run's)
	Node                   string
	Listeners              []Listener
	Builtins               []string          // run's built-in workers, by name (or BuiltinPlacesWS)
	BuiltinPorts           map[string]uint16 // the ports UDPGATE_BUILTINS moves them to, by name
	DataDir                string
	NATSListen             netip.AddrPort
	Prefix                 string
	Stream                 string
	StreamMaxAge           time.Duration
	StreamMaxBytes         int64
	StreamReplicas         int
	StreamMemory           bool   // memory storage rather than file
	StreamAsync            bool   // JetStream's asynchronous persist mode
	RepliesStream          string // "" records no replies
	Deadline               time.Duration
	DiscoveryInterval      time.Duration
	DiscoverySubscriptions bool // list the subscriptions of groups that announce nothing
	DrainTimeout           time.Duration
	Handover               string // Unix socket path of the hand-over; "" off
	MaxDatagram            int
	MaxPending             int
	ListenerMaxPending     int // 0: the gateway's default (gateway.Gateway.ListenerMaxPending)
	Queue                  int
	MaxInFlight            int
	RcvBuf                 int
	Delivery               workers.Delivery
	WorkerGroup            string
	WorkerSubjects         []string
	WorkerConcurrency      int
	WorkerBacklog          int
	AckWait                time.Duration
	LogLevel               slog.Level
	LogFormat              string // "text", "json" or "auto"
	HTTPListen             string // "" serves no metrics; "auto" is resolved by ForGateway or ForWorker
	CoAPPiggyback          time.Duration
	CoAPBlockSize          int
	CoAPMaxBody            int
	CoAPObserveCONEvery    int           // CoAP Observe: a CON at least every this many notifications
	CoAPMaxObservers       int           // CoAP Observe registrations per coap listener
	CoAPMaxObserversPeer   int           // and per client address
	CoAPLeisure            time.Duration // the most a response to a multicast request waits
	Guard                  guard.Config  // every listener's, unless its entry overrides it
	Lambda                 Lambda
	// TraceSample is the share of requests the gateway traces, 0 to 1; 0
	// traces none (docs/tracing.md).
	TraceSample float64
	// ListenersFile is the path of the listener file; "" for none.
	ListenersFile string
	Bridge        Bridge
	WS            WS
	Push          Push // unsolicited datagrams of push=on raw listeners
	DTLS          DTLS // coaps and dtls listeners
	// ObserveBucket is the CoAP Observe bucket ("" keeps registrations
	// in memory only), with its replicas and TTL.
	ObserveBucket   string
	ObserveReplicas int
	ObserveTTL      time.Duration
}

// DTLS configures every coaps and dtls listener.
type DTLS struct {
	// PSKFile holds the pre-shared keys (dtls.ParseKeys); CertFile and
	// KeyFile the server's certificate; ClientCA the CAs that verify
	// client certificates. Empty: none.
	PSKFile, CertFile, KeyFile, ClientCA string
	MaxSessions                          int
	Idle, HandshakeTimeout               time.Duration
	HandshakeRate                        float64 // per source address; 0: no limit
}

// On reports whether a DTLS listener can authenticate anyone.
func (d DTLS) On() bool { return d.PSKFile != "" || d.CertFile != "" }

// WS configures every ws listener (each one's path is its own).
type WS struct {
	Origins        []string // patterns of allowed origins besides the page's own host
	MaxConnections int
	MaxInFlight    int           // per connection
	Ping           time.Duration // 0: no pings
	Idle           time.Duration // 0: never closed for idleness
	ConnectWait    time.Duration // for a $connect reply; 0: published, not waited for
	MaxPush        int           // pushed messages not yet written, per connection
	ConnRate       float64       // messages per second per connection; 0: no limit
	// CertFile and KeyFile are wss listeners' certificate chain and key
	// (PEM), loaded again when they change.
	CertFile, KeyFile string
}

// Bridge configures leased listeners (the koi_udp API, over HTTP and
// NATS). They are off unless Ports holds a port.
type Bridge struct {
	Ports       []PortRange
	Token       Secret // HTTP callers' bearer token; "" turns the HTTP API off
	MaxBindings int
	SendAllow   []netip.Prefix
	SendRate    float64 // datagrams per second per lease; 0: no limit
}

// On reports whether leases may be made at all.
func (b Bridge) On() bool { return len(b.Ports) > 0 }

// Allows reports whether a lease may bind port (0 asks for any).
func (b Bridge) Allows(port uint16) bool {
	for _, r := range b.Ports {
		if port >= r.Low && port <= r.High {
			return true
		}
	}
	return false
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Low, High uint16 }

func (r PortRange) String() string {
	if r.Low == r.High {
		return strconv.Itoa(int(r.Low))
	}
	return strconv.Itoa(int(r.Low)) + "-" + strconv.Itoa(int(r.High))
}

// ParsePortRanges parses comma-separated PORT or LOW-HIGH entries (ports
// 1 to 65535), naming every bad one.
func ParsePortRanges(s string) ([]PortRange, error) {
	var out []PortRange
	var bad []string
	for _, f := range SplitList(s) {
		lo, hi, isRange := strings.Cut(f, "-")
		if !isRange {
			hi = lo
		}
		l, errl := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		h, errh := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		if errl != nil || errh != nil || l == 0 || h < l {
			bad = append(bad, fmt.Sprintf("%q is not PORT or LOW-HIGH with 1 <= LOW <= HIGH <= 65535", f))
			continue
		}
		out = append(out, PortRange{uint16(l), uint16(h)})
	}
	if len(bad) > 0 {
		return nil, errors.New(strings.Join(bad, "; "))
	}
	return out, nil
}

// Lambda configures `udpgate lambda`; checked by that command, since
// only it needs a function.
type Lambda struct {
	Function    string
	Subjects    []string
	Group       string
	Concurrency int
	Timeout     time.Duration
	Event       string
	BatchSize   int
	BatchWindow time.Duration
	Endpoint    string
}

// listener is one [ADDR:]PORT/PROTOCOL entry.
type Listener struct {
	Addr     netip.AddrPort // address 0.0.0.0 when none was given
	Protocol string
	Options  string // ;KEY=VALUE... overriding the guard's defaults, checked (guard_config.go)
	// Path is where a ws listener serves its WebSocket (option path=,
	// "/" by default); empty for the others.
	Path string
	// NoReply (option reply=off, raw only): datagrams are captured and
	// published, and never answered.
	NoReply bool
	// Push (option push=on, raw only): workers may send unsolicited
	// datagrams to the listener's peers (Config.Push).
	Push bool
	// TLS: a ws listener written wss, serving WebSocket over TLS with
	// UDPGATE_WSS_CERT_FILE and UDPGATE_WSS_KEY_FILE. Its calls are a ws
	// listener's (subjects, ce-source …/PORT/ws): TLS changes the
	// transport, not the wire contract.
	TLS bool
	// DTLS: a coap listener written coaps, or a raw one written dtls,
	// whose datagrams come in DTLS sessions (UDPGATE_DTLS_*). As with
	// wss, its requests are the plain listener's (PORT/coap, PORT/raw),
	// with the client's identity besides.
	DTLS bool
	// DontFragment (option df=on, UDP listeners): replies are sent with
	// fragmentation forbidden; one larger than the path MTU is not sent
	// (counted).
	DontFragment bool
}

func (l Listener) String() string {
	switch {
	case l.TLS:
		return l.Addr.String() + "/" + ProtocolWSS
	case l.DTLS && l.Protocol == schemas.ProtocolCoAP:
		return l.Addr.String() + "/" + ProtocolCoAPS
	case l.DTLS:
		return l.Addr.String() + "/" + ProtocolDTLS
	}
	return l.Addr.String() + "/" + l.Protocol
}

// How UDPGATE_LISTENERS writes the DTLS listeners: CoAP over DTLS, and
// raw datagrams over DTLS.
const (
	ProtocolCoAPS = "coaps"
	ProtocolDTLS  = "dtls"
)

// ProtocolWSS is how UDPGATE_LISTENERS writes a ws listener over TLS.
const ProtocolWSS = "wss"

// BuiltinPlacesWS names in UDPGATE_BUILTINS run's ws listener, 8080/ws,
// served by the built-in places worker as 7000/rpc is: a worker's name
// would name its rpc listener.
const BuiltinPlacesWS = "places-ws"

// Network is the socket network for the listener's address: TCP for a
// ws listener, UDP for the others.
func (l Listener) Network() string {
	n := "udp"
	if l.Protocol == schemas.ProtocolWS {
		n = "tcp"
	}
	if l.Addr.Addr().Is4() {
		return n + "4"
	}
	return n + "6"
}

const Prefix = "UDPGATE"

// Load reads UDPGATE_* from the environment.
func Load() (Config, error) {
	var e env
	if err := envconfig.Process(Prefix, &e); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return e.parse(os.Environ())
}

// parse validates e. environ is checked for UDPGATE_* names that are not
// udpgate's, such as misspellings. The error lists every problem, one per
// line, each naming its variable.
func (e env) parse(environ []string) (Config, error) {
	var problems []string
	bad := func(name, format string, args ...any) {
		problems = append(problems, Prefix+"_"+name+": "+fmt.Sprintf(format, args...))
	}
	c := Config{
		NATSURL: URLs(e.NATSURL), Node: e.Node, DataDir: e.DataDir, Prefix: e.SubjectPrefix,
		Stream: e.Stream, WorkerGroup: e.WorkerGroup,
	}
	c.NATSURLVariable = Prefix + "_NATS_URL"
	if u, ok := lookup(environ, "NATS_URL"); ok && u != "" {
		if _, set := lookup(environ, Prefix+"_NATS_URL"); !set {
			c.NATSURL, c.NATSURLVariable = URLs(u), "NATS_URL"
		}
	}
	if strings.TrimSpace(string(c.NATSURL)) == "" {
		bad("NATS_URL", "must not be empty")
	}
	c.NATSAuth = e.parseNATSAuth(bad)
	if c.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			bad("NODE", "not set, and the host name is unknown (%v)", err)
		}
		c.Node = h
	}
	if c.Node != "" && !schemas.ValidNode(c.Node) {
		bad("NODE", "%q cannot name a node: at most 253 bytes, no spaces and none of / ? # @ : %% [ ] (it is the host of every request's ce-source URI)", c.Node)
	}
	if !ValidSubjectPrefix(c.Prefix) {
		bad("SUBJECT_PREFIX", "%q is not a NATS subject prefix (tokens of letters, digits, - and _ separated by dots)", c.Prefix)
	}
	switch c.RepliesStream = e.RepliesStream; {
	case c.RepliesStream == "off":
		c.RepliesStream = ""
	case !ValidStreamName(c.RepliesStream):
		bad("REPLIES_STREAM", "%q is not a JetStream stream name, or off", c.RepliesStream)
	case c.RepliesStream == e.Stream:
		bad("REPLIES_STREAM", "%q is also UDPGATE_STREAM", c.RepliesStream)
	}
	if !ValidStreamName(c.Stream) {
		bad("STREAM", "%q is not a JetStream stream name (no spaces, dots, *, > or path separators)", c.Stream)
	}
	var err error
	if c.Listeners, err = ParseListeners(e.Listeners); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			bad("LISTENERS", "%s", line)
		}
	}
	c.WS.CertFile, c.WS.KeyFile = strings.TrimSpace(e.WSSCertFile), strings.TrimSpace(e.WSSKeyFile)
	if (c.WS.CertFile == "") != (c.WS.KeyFile == "") {
		bad("WSS_CERT_FILE", "and UDPGATE_WSS_KEY_FILE go together: set both or neither")
	}
	if c.WS.CertFile == "" && slices.ContainsFunc(c.Listeners, func(l Listener) bool { return l.TLS }) {
		bad("WSS_CERT_FILE", "a wss listener needs a certificate: set UDPGATE_WSS_CERT_FILE and UDPGATE_WSS_KEY_FILE")
	}
	c.DTLS = e.parseDTLS(bad, slices.ContainsFunc(c.Listeners, func(l Listener) bool { return l.DTLS }))
	if b := strings.TrimSpace(e.Builtins); b != "off" {
		for _, entry := range SplitList(b) {
			name, port, moved := strings.Cut(entry, "=")
			name = strings.TrimSpace(name)
			if names := append(builtin.Names(), BuiltinPlacesWS); !slices.Contains(names, name) {
				bad("BUILTINS", "%q is not a built-in worker (%s), and the list not off", name, strings.Join(names, ", "))
				continue
			}
			if moved {
				n, err := strconv.ParseUint(strings.TrimSpace(port), 10, 16)
				if err != nil || n == 0 {
					bad("BUILTINS", "%q: the port of %s must be 1..65535", entry, name)
					continue
				}
				if c.BuiltinPorts == nil {
					c.BuiltinPorts = map[string]uint16{}
				}
				c.BuiltinPorts[name] = uint16(n)
			}
			if !slices.Contains(c.Builtins, name) {
				c.Builtins = append(c.Builtins, name)
			}
		}
	}
	if c.NATSListen, err = parseHostPort(e.NATSListen); err != nil {
		bad("NATS_LISTEN", "%v", err)
	}
	duration := func(name, s string, min time.Duration, dst *time.Duration) {
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			bad(name, "%q is not a duration (like 500ms, 5s, 24h)", s)
		case d < min:
			bad(name, "%s is below the minimum %s", d, min)
		default:
			*dst = d
		}
	}
	integer := func(name, s string, lo, hi int, dst *int) {
		n, err := strconv.Atoi(s)
		switch {
		case err != nil:
			bad(name, "%q is not an integer", s)
		case n < lo || n > hi:
			bad(name, "%d is outside %d..%d", n, lo, hi)
		default:
			*dst = n
		}
	}
	duration("STREAM_MAX_AGE", e.StreamMaxAge, 0, &c.StreamMaxAge)
	duration("DEADLINE", e.Deadline, time.Millisecond, &c.Deadline)
	duration("DISCOVERY_INTERVAL", e.DiscoveryInterval, 100*time.Millisecond, &c.DiscoveryInterval)
	duration("DRAIN_TIMEOUT", e.DrainTimeout, 0, &c.DrainTimeout)
	c.Handover = e.Handover
	duration("ACK_WAIT", e.AckWait, 100*time.Millisecond, &c.AckWait)
	if c.StreamMaxBytes, err = parseBytes(e.StreamMaxBytes); err != nil {
		bad("STREAM_MAX_BYTES", "%v", err)
	}
	integer("STREAM_REPLICAS", e.StreamReplicas, 1, 5, &c.StreamReplicas)
	switch e.StreamStorage {
	case "file":
	case "memory":
		c.StreamMemory = true
	default:
		bad("STREAM_STORAGE", "%q is not file or memory", e.StreamStorage)
	}
	switch e.DiscoverySubscriptions {
	case "on":
		c.DiscoverySubscriptions = true
	case "off":
	default:
		bad("DISCOVERY_SUBSCRIPTIONS", "%q is not on or off", e.DiscoverySubscriptions)
	}
	switch e.StreamPersist {
	case "sync":
	case "async":
		c.StreamAsync = true
	default:
		bad("STREAM_PERSIST", "%q is not sync or async", e.StreamPersist)
	}
	if c.StreamAsync && c.StreamMemory {
		bad("STREAM_PERSIST", "async needs UDPGATE_STREAM_STORAGE=file (memory storage has nothing to persist)")
	}
	if c.StreamAsync && c.StreamReplicas > 1 {
		bad("STREAM_PERSIST", "async needs UDPGATE_STREAM_REPLICAS=1: JetStream refuses it on replicated streams, which batch their writes already")
	}
	integer("MAX_DATAGRAM", e.MaxDatagram, 1, 65535, &c.MaxDatagram)
	integer("MAX_PENDING", e.MaxPending, 1, 1<<24, &c.MaxPending)
	if v, pct := strings.CutSuffix(strings.TrimSpace(e.ListenerMaxPending), "%"); pct {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil || n < 1 || n > 100:
			bad("LISTENER_MAX_PENDING", "%q is not a percentage from 1%% to 100%%", e.ListenerMaxPending)
		case c.MaxPending > 0:
			c.ListenerMaxPending = max(1, c.MaxPending*n/100)
		}
	} else if n, err := strconv.Atoi(v); err != nil || n < 0 {
		bad("LISTENER_MAX_PENDING", "%q is not a number of exchanges or a percentage of UDPGATE_MAX_PENDING (like 16384 or 25%%)", e.ListenerMaxPending)
	} else if c.MaxPending > 0 && n > c.MaxPending {
		bad("LISTENER_MAX_PENDING", "%d is above UDPGATE_MAX_PENDING %d", n, c.MaxPending)
	} else {
		c.ListenerMaxPending = n
	}
	integer("QUEUE", e.Queue, 1, 1<<20, &c.Queue)
	integer("MAX_INFLIGHT", e.MaxInFlight, 1, 1<<20, &c.MaxInFlight)
	integer("RCVBUF", e.RcvBuf, 0, 1<<30, &c.RcvBuf)
	integer("WORKER_CONCURRENCY", e.WorkerConcurrency, 1, 1<<16, &c.WorkerConcurrency)
	integer("WORKER_BACKLOG", e.WorkerBacklog, 1, 1<<20, &c.WorkerBacklog)
	if d, err := workers.ParseDelivery(e.Delivery); err != nil {
		bad("DELIVERY", "%q is not direct or durable", e.Delivery)
	} else {
		c.Delivery = d
	}
	for _, s := range SplitList(e.WorkerSubjects) {
		if strings.ContainsAny(s, " \t") || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
			bad("WORKER_SUBJECTS", "%q is not a NATS subject", s)
			continue
		}
		c.WorkerSubjects = append(c.WorkerSubjects, s)
	}
	duration("COAP_PIGGYBACK", e.CoAPPiggyback, time.Millisecond, &c.CoAPPiggyback)
	integer("COAP_BLOCK_SIZE", e.CoAPBlockSize, 16, 1024, &c.CoAPBlockSize)
	if c.CoAPBlockSize&(c.CoAPBlockSize-1) != 0 {
		bad("COAP_BLOCK_SIZE", "%d is not a power of two (16, 32, 64, ... 1024)", c.CoAPBlockSize)
	}
	if n, err := parseBytes(e.CoAPMaxBody); err != nil || n <= 0 || n > 1<<30 {
		bad("COAP_MAX_BODY", "%q is not a size between 1 byte and 1GiB", e.CoAPMaxBody)
	} else {
		c.CoAPMaxBody = int(n)
	}
	integer("COAP_OBSERVE_CON_EVERY", e.CoAPObserveCONEvery, 1, 1<<20, &c.CoAPObserveCONEvery)
	integer("COAP_MAX_OBSERVERS", e.CoAPMaxObservers, 1, 1<<24, &c.CoAPMaxObservers)
	integer("COAP_MAX_OBSERVERS_PER_PEER", e.CoAPMaxObserversPeer, 1, 1<<24, &c.CoAPMaxObserversPeer)
	switch b := e.ObserveBucket; {
	case b == "off":
	case b == "" || strings.Trim(b, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "":
		bad("OBSERVE_BUCKET", "%q is not a key-value bucket name (letters, digits, - and _) or off", b)
	default:
		c.ObserveBucket = b
	}
	integer("OBSERVE_REPLICAS", e.ObserveReplicas, 0, 5, &c.ObserveReplicas)
	if c.ObserveReplicas == 0 {
		c.ObserveReplicas = c.StreamReplicas
	}
	duration("OBSERVE_TTL", e.ObserveTTL, 10*time.Second, &c.ObserveTTL)
	duration("COAP_LEISURE", e.CoAPLeisure, time.Millisecond, &c.CoAPLeisure)
	c.Guard = e.parseGuard(bad)
	c.Push = e.parsePush(bad)
	if c.CoAPPiggyback >= c.Deadline && c.Deadline > 0 {
		bad("COAP_PIGGYBACK", "%s is not shorter than UDPGATE_DEADLINE %s", c.CoAPPiggyback, c.Deadline)
	}
	c.Lambda.Function, c.Lambda.Group, c.Lambda.Endpoint = e.LambdaFunction, e.LambdaGroup, e.LambdaEndpoint
	c.Lambda.Subjects = SplitList(e.LambdaSubjects)
	integer("LAMBDA_CONCURRENCY", e.LambdaConc, 1, 1<<12, &c.Lambda.Concurrency)
	duration("LAMBDA_TIMEOUT", e.LambdaTimeout, time.Millisecond, &c.Lambda.Timeout)
	switch e.LambdaEvent {
	case "native", "batch":
		c.Lambda.Event = e.LambdaEvent
	default:
		bad("LAMBDA_EVENT", "%q is not native or batch", e.LambdaEvent)
	}
	integer("LAMBDA_BATCH_SIZE", e.LambdaBatch, 1, 1000, &c.Lambda.BatchSize)
	duration("LAMBDA_BATCH_WINDOW", e.LambdaWindow, 0, &c.Lambda.BatchWindow)
	if e.LambdaEndpoint != "" {
		if u, err := url.Parse(e.LambdaEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("LAMBDA_ENDPOINT", "%q is not an http:// or https:// URL", e.LambdaEndpoint)
		}
	}
	c.ListenersFile = strings.TrimSpace(e.ListenersFile)
	if rs, err := ParsePortRanges(e.BridgePorts); err != nil {
		bad("BRIDGE_PORTS", "%v", err)
	} else {
		c.Bridge.Ports = rs
	}
	c.Bridge.Token = Secret(e.BridgeToken)
	integer("BRIDGE_MAX_BINDINGS", e.BridgeMaxBindings, 1, 1<<16, &c.Bridge.MaxBindings)
	for _, o := range SplitList(e.WSOrigins) {
		if _, err := path.Match(o, ""); err != nil || strings.ContainsAny(o, "/ ") && !strings.Contains(o, "://") {
			bad("WS_ORIGINS", "%q is not a host pattern (example.com, *.example.com) or scheme://host pattern", o)
			continue
		}
		c.WS.Origins = append(c.WS.Origins, o)
	}
	integer("WS_MAX_CONNECTIONS", e.WSMaxConnections, 1, 1<<20, &c.WS.MaxConnections)
	integer("WS_MAX_INFLIGHT", e.WSMaxInFlight, 1, 1<<16, &c.WS.MaxInFlight)
	duration("WS_PING", e.WSPing, 0, &c.WS.Ping)
	duration("WS_IDLE", e.WSIdle, 0, &c.WS.Idle)
	duration("WS_CONNECT_WAIT", e.WSConnectWait, 0, &c.WS.ConnectWait)
	integer("WS_MAX_PUSH", e.WSMaxPush, 1, 1<<16, &c.WS.MaxPush)
	if err := parseRate("rate", e.WSConnRate, &c.WS.ConnRate); err != nil {
		bad("WS_CONN_RATE", "%q is not a rate between 0 (no limit) and 1e9 per second", e.WSConnRate)
	}
	if ps, err := guard.ParsePrefixes(e.BridgeSendAllow); err != nil {
		bad("BRIDGE_SEND_ALLOW", "%v", err)
	} else {
		c.Bridge.SendAllow = ps
	}
	if f, err := strconv.ParseFloat(strings.TrimSpace(e.BridgeSendRate), 64); err != nil || f < 0 || f > 1e9 || math.IsNaN(f) {
		bad("BRIDGE_SEND_RATE", "%q is not a rate between 0 (no limit) and 1e9 per second", e.BridgeSendRate)
	} else {
		c.Bridge.SendRate = f
	}
	if f, err := strconv.ParseFloat(strings.TrimSpace(e.TraceSample), 64); err != nil || !(f >= 0 && f <= 1) {
		bad("TRACE_SAMPLE", "%q is not a share of requests from 0 to 1 (like 0.01; 0 traces none)", e.TraceSample)
	} else {
		c.TraceSample = f
	}
	if err := c.LogLevel.UnmarshalText([]byte(e.LogLevel)); err != nil {
		bad("LOG_LEVEL", "%q is not one of debug, info, warn, error", e.LogLevel)
	}
	switch e.LogFormat {
	case "text", "json", "auto":
		c.LogFormat = e.LogFormat
	default:
		bad("LOG_FORMAT", "%q is not text, json or auto", e.LogFormat)
	}
	if c.HTTPListen = strings.TrimSpace(e.HTTPListen); c.HTTPListen != "" && c.HTTPListen != HTTPAuto {
		host, port, err := net.SplitHostPort(c.HTTPListen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || (host != "" && host != "localhost" && net.ParseIP(host) == nil) {
			bad("HTTP_LISTEN", "%q is not HOST:PORT (like 127.0.0.1:9780, :9780, [::1]:0), auto, or empty", e.HTTPListen)
		}
	}
	for _, name := range unknownVariables(environ) {
		problems = append(problems, name+": not a udpgate variable"+suggest(name))
	}
	if len(problems) > 0 {
		return c, &Error{Problems: problems}
	}
	return c, nil
}

// Error lists every configuration problem.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return "bad configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// KnownVariables returns the UDPGATE_* names udpgate reads.
func KnownVariables() []string {
	var names []string
	t := reflect.TypeFor[env]()
	for i := range t.NumField() {
		names = append(names, Prefix+"_"+t.Field(i).Tag.Get("envconfig"))
	}
	return names
}

func unknownVariables(environ []string) []string {
	known := KnownVariables()
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, Prefix+"_") && !slices.Contains(known, name) {
			unknown = append(unknown, name)
		}
	}
	slices.Sort(unknown)
	return unknown
}

// suggest names the known variable closest to name, if one is close.
func suggest(name string) string {
	best, bestD := "", 4
	for _, k := range KnownVariables() {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// lookup returns the value of the variable name in environ.
func lookup(environ []string, name string) (string, bool) {
	for _, kv := range environ {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v, true
		}
	}
	return "", false
}

// SplitList splits a comma-separated list, dropping empty entries.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseListeners parses comma-separated [ADDR:]PORT/PROTOCOL entries. A
// missing ADDR means 0.0.0.0; IPv6 addresses are bracketed. Every bad
// entry is reported.
func ParseListeners(s string) ([]Listener, error) {
	var (
		out  []Listener
		errs []error
	)
	ports := map[uint16]string{}
	for _, f := range SplitList(s) {
		l, err := parseListener(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p, ok := ports[l.Addr.Port()]; ok && p != l.Protocol {
			errs = append(errs, fmt.Errorf("%q: port %d is already a %s listener (one subject per port)", f, l.Addr.Port(), p))
			continue
		}
		ports[l.Addr.Port()] = l.Protocol
		if i := slices.IndexFunc(out, func(o Listener) bool { return o.Addr == l.Addr && o.Protocol == l.Protocol }); i >= 0 {
			if out[i].Options != l.Options || out[i].TLS != l.TLS || out[i].DTLS != l.DTLS {
				errs = append(errs, fmt.Errorf("%q: %s is already listed with other options", f, out[i]))
			}
			continue
		}
		out = append(out, l)
	}
	return out, errors.Join(errs...)
}

func parseListener(f string) (Listener, error) {
	entry, opts, _ := strings.Cut(f, ";")
	hostport, proto, ok := strings.Cut(entry, "/")
	if !ok {
		return Listener{}, fmt.Errorf("%q: want [ADDR:]PORT/PROTOCOL, like 9000/raw", f)
	}
	tls := proto == ProtocolWSS
	if tls {
		proto = schemas.ProtocolWS
	}
	secure := proto == ProtocolCoAPS || proto == ProtocolDTLS
	switch proto {
	case ProtocolCoAPS:
		proto = schemas.ProtocolCoAP
	case ProtocolDTLS:
		proto = schemas.ProtocolRaw
	}
	if err := checkListenerOptions(opts); err != nil {
		return Listener{}, fmt.Errorf("%q: %v", f, err)
	}
	keys := optionKeys(opts)
	switch proto {
	case schemas.ProtocolRaw, schemas.ProtocolCoAP, schemas.ProtocolRPC:
		for _, k := range wsOnlyOptions {
			if slices.Contains(keys, k) {
				return Listener{}, fmt.Errorf("%q: %s= is for ws listeners", f, k)
			}
		}
	case schemas.ProtocolWS:
		for _, k := range udpOnlyOptions {
			if slices.Contains(keys, k) {
				return Listener{}, fmt.Errorf("%q: %s= is for UDP listeners (a ws listener's calls come over TCP)", f, k)
			}
		}
		path := "/"
		if p, ok := wsPath(opts); ok {
			path = p
			if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?# ") {
				return Listener{}, fmt.Errorf("%q: path=%s: want an absolute path like /rpc", f, path)
			}
		}
		ap, err := listenerAddr(hostport)
		if err != nil {
			return Listener{}, fmt.Errorf("%q: %v", f, err)
		}
		return Listener{Addr: ap, Protocol: proto, Options: opts, Path: path, TLS: tls}, nil
	default:
		return Listener{}, fmt.Errorf("%q: unknown protocol %q (supported: raw, coap, rpc, ws, wss, coaps, dtls)", f, proto)
	}
	ap, err := listenerAddr(hostport)
	if err != nil {
		return Listener{}, fmt.Errorf("%q: %v", f, err)
	}
	noReply := replyOff(opts)
	if noReply && proto != schemas.ProtocolRaw {
		return Listener{}, fmt.Errorf("%q: reply=off is for raw listeners: CoAP and RPC clients expect an answer", f)
	}
	push := pushOn(opts)
	if push && proto != schemas.ProtocolRaw {
		return Listener{}, fmt.Errorf("%q: push=on is for raw listeners", f)
	}
	if secure && (noReply || push) {
		return Listener{}, fmt.Errorf("%q: reply=off and push=on are not for DTLS listeners (not built yet)", f)
	}
	groups, err := listenerGroups(opts, ap.Addr(), proto) // Listener.Groups
	if err == nil && secure && groups != nil {
		err = errors.New("group= is not for DTLS listeners: a session is with one peer")
	}
	if err != nil {
		return Listener{}, fmt.Errorf("%q: %v", f, err)
	}
	if identitiesOf(opts) != nil && !secure {
		return Listener{}, fmt.Errorf("%q: identity= is for coaps and dtls listeners: only a DTLS session authenticates its peer", f)
	}
	return Listener{Addr: ap, Protocol: proto, Options: opts, NoReply: noReply, Push: push, DTLS: secure, DontFragment: dfOn(opts)}, nil
}

// listenerAddr parses a listener's [ADDR:]PORT, 0.0.0.0 when no address
// is given.
func listenerAddr(hostport string) (netip.AddrPort, error) {
	if !strings.Contains(hostport, ":") {
		hostport = "0.0.0.0:" + hostport
	}
	ap, err := parseHostPort(hostport)
	if err != nil {
		return ap, err
	}
	if ap.Port() == 0 {
		return ap, errors.New("port must be 1..65535")
	}
	return ap, nil
}

// wsPath returns the value of a path= option among opts.
func wsPath(opts string) (string, bool) {
	for _, kv := range strings.Split(opts, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "path="); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func parseHostPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IP:PORT or [IPv6]:PORT", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// parseBytes parses a size: a number of bytes, optionally with a suffix
// KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
// 0 and -1 mean no limit.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < -1 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (like 1073741824, 512MiB, 10GB; 0 for no limit)", s)
	}
	if n <= 0 {
		return -1, nil
	}
	return n * mult, nil
}

func ValidSubjectPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || schemas.EscapeToken(tok) != tok {
			return false
		}
	}
	return true
}

func ValidStreamName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}

// Usage writes a line per variable: its name, default and description.
func Usage(w io.Writer) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	envconfig.Usagef(Prefix, &env{}, tw, "{{range .}}  {{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}")
	tw.Flush()
}

// UDPGATE_HTTP_LISTEN's default, and what it means for each kind of
// process: a gateway's endpoint at a known port (`udpgate status` asks
// it there), and a worker's on any free port, so that any number of
// workers and bridges run next to a gateway on one host. 9780 is not one
// of the ports the Prometheus ecosystem uses by default (9090 is
// Prometheus's own).
const (
	HTTPAuto    = "auto"
	HTTPGateway = "127.0.0.1:9780"
	HTTPWorker  = "127.0.0.1:0"
)

// ForGateway returns c with UDPGATE_HTTP_LISTEN resolved for a gateway
// (`run`, `gateway`).
func (c Config) ForGateway() Config {
	if c.HTTPListen == HTTPAuto {
		c.HTTPListen = HTTPGateway
	}
	return c
}

// ForWorker returns c with UDPGATE_HTTP_LISTEN resolved for a worker
// process (`worker`, `lambda`).
func (c Config) ForWorker() Config {
	if c.HTTPListen == HTTPAuto {
		c.HTTPListen = HTTPWorker
	}
	return c
}

// GatewayHTTPListen returns the address of the HTTP endpoint that a gateway
// started in this environment serves: UDPGATE_HTTP_LISTEN as it reads it.
func GatewayHTTPListen() (string, error) {
	var e env
	if err := envconfig.Process(Prefix, &e); err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	return Config{HTTPListen: strings.TrimSpace(e.HTTPListen)}.ForGateway().HTTPListen, nil
}
