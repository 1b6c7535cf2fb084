package node

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/ratelog"
	"github.com/udpgate/udpgate/internal/version"
)

// Tracing is the process's OpenTelemetry tracer provider, exporting by
// OTLP, from the standard OTEL_* variables (docs/tracing.md).
type Tracing struct {
	// Provider makes the process's spans; nil when nothing is exported,
	// and then nothing is traced.
	Provider trace.TracerProvider

	sdk  *sdktrace.TracerProvider // nil when nothing is exported
	log  *ratelog.Logger          // export errors, every 10 s at most
	once sync.Once                // Shutdown's
}

// The standard variables StartTracing reads itself; the exporter, the
// batch span processor, the sampler and the resource read the others
// (OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_*, OTEL_TRACES_SAMPLER,
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, ...).
const (
	envEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envDisabled       = "OTEL_SDK_DISABLED"
	envExporter       = "OTEL_TRACES_EXPORTER"
)

// StartTracing sets up the process's tracing when an OTLP endpoint is
// configured (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), unless OTEL_SDK_DISABLED is true or
// OTEL_TRACES_EXPORTER is none: spans are exported in batches over
// OTLP/HTTP with protobuf, or OTLP/gRPC when OTEL_EXPORTER_OTLP_PROTOCOL
// (or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) says grpc. The provider becomes
// OpenTelemetry's global one, with the W3C Trace Context and Baggage
// propagators, so that handler code's spans join the requests' traces.
// service is the default service.name (OTEL_SERVICE_NAME overrides it).
// Without an endpoint it returns a Tracing whose Provider is nil. Call
// Shutdown when the process's parts have stopped: it exports what is left.
func StartTracing(ctx context.Context, service string, log *slog.Logger) (*Tracing, error) {
	t := &Tracing{}
	endpoint := os.Getenv(envTracesEndpoint)
	if endpoint == "" {
		endpoint = os.Getenv(envEndpoint)
	}
	if endpoint == "" || strings.EqualFold(strings.TrimSpace(os.Getenv(envDisabled)), "true") {
		return t, nil
	}
	var exp sdktrace.SpanExporter
	var err error
	switch e := strings.TrimSpace(os.Getenv(envExporter)); e {
	case "none":
		return t, nil
	case "", "otlp":
	default:
		return nil, fmt.Errorf("tracing: %s=%s: udpgate exports by otlp only (or none)", envExporter, e)
	}
	protocol, variable := os.Getenv(envTracesProtocol), envTracesProtocol
	if protocol == "" {
		protocol, variable = os.Getenv(envProtocol), envProtocol
	}
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("tracing: %s=%s: want http/protobuf or grpc", variable, protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", endpoint, err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(semconv.ServiceName(service), semconv.ServiceVersion(version.Get().Version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES: over the defaults above
	)
	if err != nil && res == nil {
		exp.Shutdown(ctx)
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	t.log = &ratelog.Logger{Log: log, Level: slog.LevelWarn, Msg: "tracing: OpenTelemetry failed (spans not exported?)"}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { t.log.Add("err", err) }))
	t.sdk = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	t.Provider = t.sdk
	otel.SetTracerProvider(t.sdk)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	log.Info("tracing: exporting spans by OTLP", "endpoint", endpoint, "protocol", cmp.Or(protocol, "http/protobuf"))
	return t, nil
}

// Shutdown exports the spans not exported yet, for at most shutdownWait,
// and stops the provider. It is a no-op on a nil Tracing, one without a
// provider, or after the first call.
func (t *Tracing) Shutdown() error {
	if t == nil || t.sdk == nil {
		return nil
	}
	var err error
	t.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
		defer cancel()
		if err = t.sdk.Shutdown(ctx); err != nil {
			err = fmt.Errorf("tracing: spans left unexported: %w", err)
		}
		t.log.Flush()
	})
	return err
}

// shutdownWait bounds the export of the last spans when a process stops.
const shutdownWait = 5 * time.Second

// startGatewayTracing starts the tracing of a gateway process and sets
// g's tracer provider and sample from it and cfg.
func startGatewayTracing(ctx context.Context, cfg config.Config, log *slog.Logger, g *gateway.Gateway) (*Tracing, error) {
	tr, err := StartTracing(ctx, "udpgate", log)
	if err != nil {
		return nil, err
	}
	if tr.Provider == nil {
		if cfg.TraceSample > 0 {
			log.Warn("tracing: UDPGATE_TRACE_SAMPLE is set, but no OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), or OpenTelemetry is disabled: no request is traced")
		}
		return tr, nil
	}
	g.TracerProvider, g.TraceSample = tr.Provider, cfg.TraceSample
	return tr, nil
}
