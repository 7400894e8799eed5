package grpcserver

import (
	"context"
	"fmt"
	"net/url"
	"os"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/stats"

	"github.com/vncgate/vncgate/pkg/config"
)

// OTLPOption is the setting's name, [vncgate] otlp_endpoint.
const OTLPOption = "otlp_endpoint"

// The standard OpenTelemetry variables StartTracing honours when
// otlp_endpoint is empty, the traces-only one first.
const (
	envTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
)

// TracingOptions are the tracing settings every service with gRPC has.
type TracingOptions struct {
	// Endpoint is [vncgate] otlp_endpoint: an OTLP/gRPC collector's URL,
	// http://host:port (plaintext) or https://host:port. Empty: the
	// environment's OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else tracing off.
	Endpoint string
}

// Declare declares otlp_endpoint on s, into o.
func (o *TracingOptions) Declare(s *config.Set) {
	s.String(&o.Endpoint, config.SectionVNCGate, OTLPOption, "",
		"OTLP/gRPC collector URL for traces of gRPC calls, e.g. http://127.0.0.1:4317; empty: OTEL_EXPORTER_OTLP_ENDPOINT, else tracing off")
}

// endpoint is the collector's URL, from the option or the environment.
func (o TracingOptions) endpoint() (string, string) {
	if o.Endpoint != "" {
		return o.Endpoint, OTLPOption
	}
	for _, name := range []string{envTracesEndpoint, envEndpoint} {
		if v := os.Getenv(name); v != "" {
			return v, name
		}
	}
	return "", ""
}

// Validate checks the endpoint the options resolve to: empty, or an http
// or https URL with a host and no more than a path.
func (o TracingOptions) Validate() error {
	ep, from := o.endpoint()
	if ep == "" {
		return nil
	}
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return fmt.Errorf("%s %.100q: want an OTLP/gRPC collector URL, http://host:port or https://host:port", from, ep)
	}
	return nil
}

// Tracing is a service's tracer: off (the zero value, or nil) or exporting
// spans to an OTLP collector in batches.
type Tracing struct {
	provider *sdktrace.TracerProvider
}

// StartTracing starts exporting the spans of gRPC calls when o (or the
// environment) names an OTLP endpoint; service is the resource's
// service.name. Off, it starts nothing. Stop it with Shutdown.
func StartTracing(ctx context.Context, o TracingOptions, service string) (*Tracing, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ep, _ := o.endpoint()
	if ep == "" {
		return &Tracing{}, nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(ep))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", OTLPOption, err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", service))
	return &Tracing{provider: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))}, nil
}

// Enabled reports whether spans are exported.
func (t *Tracing) Enabled() bool { return t != nil && t.provider != nil }

// Shutdown exports the spans still queued and stops the exporter; ctx
// bounds how long a collector that does not answer may hold it.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// otelOptions: W3C trace context in gRPC metadata, our provider, and no
// metrics from otelgrpc (the Prometheus provider counts calls).
func (t *Tracing) otelOptions() []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(t.provider),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
		otelgrpc.WithMeterProvider(noop.NewMeterProvider()),
	}
}

func (t *Tracing) serverHandler() stats.Handler {
	if !t.Enabled() {
		return nil
	}
	return otelgrpc.NewServerHandler(t.otelOptions()...)
}

func (t *Tracing) clientHandler() stats.Handler {
	if !t.Enabled() {
		return nil
	}
	return otelgrpc.NewClientHandler(t.otelOptions()...)
}
