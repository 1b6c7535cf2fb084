package node

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/otlptest"
	"github.com/udpgate/udpgate/schemas"
)

// otelVariables are the OTEL_* variables the tests set; each test starts
// with none of them.
var otelVariables = []string{
	envEndpoint, envTracesEndpoint, envProtocol, envTracesProtocol, envDisabled, envExporter,
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
}

func clearOTel(t *testing.T) {
	t.Helper()
	for _, name := range otelVariables {
		t.Setenv(name, "") // restored after the test
		os.Unsetenv(name)
	}
}

var discard = slog.New(slog.DiscardHandler)

// TestStartTracing: StartTracing exports by OTLP only when an endpoint is
// set, over HTTP or gRPC as the standard variables say, with the
// service's name unless OTEL_SERVICE_NAME gives one, and exports what is
// left when it shuts down.
func TestStartTracing(t *testing.T) {
	tests := []struct {
		name     string
		receiver func(testing.TB) *otlptest.Receiver // nil: none
		env      map[string]string                   // RECEIVER: the receiver's endpoint
		service  string                              // the spans' service.name; "" when nothing is exported
		bad      string                              // part of StartTracing's error
	}{
		{name: "no endpoint"},
		{name: "http", receiver: otlptest.NewHTTP, env: map[string]string{envEndpoint: "RECEIVER"}, service: "udpgate-test"},
		{name: "traces endpoint, service name", receiver: otlptest.NewHTTP,
			env: map[string]string{envTracesEndpoint: "RECEIVER/v1/traces", "OTEL_SERVICE_NAME": "gw-7"}, service: "gw-7"},
		{name: "grpc", receiver: otlptest.NewGRPC, env: map[string]string{envEndpoint: "RECEIVER", envProtocol: "grpc"}, service: "udpgate-test"},
		{name: "grpc for traces only", receiver: otlptest.NewGRPC, env: map[string]string{envEndpoint: "RECEIVER", envProtocol: "http/protobuf", envTracesProtocol: "grpc"}, service: "udpgate-test"},
		{name: "disabled", receiver: otlptest.NewHTTP, env: map[string]string{envEndpoint: "RECEIVER", envDisabled: "true"}},
		{name: "exporter none", receiver: otlptest.NewHTTP, env: map[string]string{envEndpoint: "RECEIVER", envExporter: "none"}},
		{name: "exporter zipkin", receiver: otlptest.NewHTTP, env: map[string]string{envEndpoint: "RECEIVER", envExporter: "zipkin"}, bad: "OTEL_TRACES_EXPORTER=zipkin"},
		{name: "protocol http/json", receiver: otlptest.NewHTTP, env: map[string]string{envEndpoint: "RECEIVER", envProtocol: "http/json"}, bad: "OTEL_EXPORTER_OTLP_PROTOCOL=http/json: want http/protobuf or grpc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTel(t)
			var rcv *otlptest.Receiver
			if tt.receiver != nil {
				rcv = tt.receiver(t)
			}
			for k, v := range tt.env {
				t.Setenv(k, strings.ReplaceAll(v, "RECEIVER", rcv.Endpoint))
			}
			tr, err := StartTracing(context.Background(), "udpgate-test", discard)
			if tt.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("error %v, want one with %q", err, tt.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tr.Provider != nil) != (tt.service != "") {
				t.Fatalf("provider %v, want one: %v", tr.Provider, tt.service != "")
			}
			if tr.Provider == nil {
				if err := tr.Shutdown(); err != nil {
					t.Error(err)
				}
				return
			}
			if otel.GetTracerProvider() != tr.Provider {
				t.Error("the provider is not the global one")
			}
			_, span := otel.Tracer("test").Start(context.Background(), "one span")
			span.End()
			if err := tr.Shutdown(); err != nil {
				t.Fatal(err)
			}
			spans := rcv.Spans()
			if len(spans) != 1 || spans[0].Name != "one span" || spans[0].Service != tt.service {
				t.Errorf("received %v: want one span of %s", spans, tt.service)
			}
			if err := tr.Shutdown(); err != nil {
				t.Errorf("second Shutdown: %v", err)
			}
		})
	}
}

// TestNodeTraces: a node started as `udpgate run` starts it, with
// UDPGATE_TRACE_SAMPLE=1 and an OTLP endpoint, exports one request's
// three spans in one trace (ingress, the built-in echo worker, egress)
// by the time it has stopped; with UDPGATE_TRACE_SAMPLE=0 it exports
// nothing.
func TestNodeTraces(t *testing.T) {
	for _, sample := range []string{"1", "0"} {
		t.Run("sample "+sample, func(t *testing.T) {
			clearOTel(t)
			rcv := otlptest.NewHTTP(t)
			t.Setenv(envEndpoint, rcv.Endpoint)
			cfg := nodeConfig(t, map[string]string{"TRACE_SAMPLE": sample})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n, err := Start(ctx, cfg, discard, Options{
				Listeners: []config.Listener{{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: schemas.ProtocolRaw}},
				Workers:   []Worker{{Name: "echo"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(n.Ports[0]))
			if err != nil {
				n.Close()
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 64)
			got, err := c.Read(buf)
			n.Close() // exports what is left
			if err != nil || string(buf[:got]) != "hello" {
				t.Fatalf("reply %q, %v", buf[:got], err)
			}
			spans := rcv.Spans()
			if sample == "0" {
				if len(spans) != 0 {
					t.Errorf("%d spans exported with UDPGATE_TRACE_SAMPLE=0: %v", len(spans), spans)
				}
				return
			}
			if len(spans) != 3 {
				t.Fatalf("%d spans, want 3: %v", len(spans), spans)
			}
			byName := map[string]otlptest.Span{}
			for _, s := range spans {
				byName[strings.Fields(s.Name)[0]] = s
				if s.TraceID != spans[0].TraceID || s.Service != "udpgate" {
					t.Errorf("span %v: want trace %s, service udpgate", s, spans[0].TraceID)
				}
			}
			in, work, out := byName["ingress"], byName["worker"], byName["egress"]
			if in.ParentSpanID != "" || work.ParentSpanID != in.SpanID || out.ParentSpanID != work.SpanID {
				t.Errorf("not ingress → worker → egress: %v", spans)
			}
		})
	}
}

// nodeConfig returns the configuration of a test node: the environment's
// defaults with vars (UDPGATE_ names without the prefix) over them, an
// embedded NATS server on a free port with its store in a temporary
// directory, and no HTTP endpoint.
func nodeConfig(t *testing.T, vars map[string]string) config.Config {
	t.Helper()
	for _, name := range config.KnownVariables() {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	vars["DATA_DIR"] = t.TempDir()
	vars["NATS_LISTEN"] = "127.0.0.1:0"
	vars["HTTP_LISTEN"] = ""
	vars["NODE"] = "trace-test"
	for k, v := range vars {
		t.Setenv(config.Prefix+"_"+k, v)
	}
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	return cfg.ForGateway()
}
