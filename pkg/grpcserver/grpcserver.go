// Package grpcserver is the one place where a vncgate gRPC server's and
// client's observability is assembled, so every service's calls look the
// same in logs, metrics and traces:
//
//   - request ids (package requestid): a server takes the caller's valid
//     x-request-id or makes one, puts it in the call's context (every log
//     line written with that context carries it, see package logging); it
//     is not echoed in a response header, which would stop gRPC retrying an
//     UNAVAILABLE answer on another replica; a client sends its context's id;
//   - one "rpc" log line per unary call served: method, code, duration_ms,
//     error, request_id; never the request (it may carry a token);
//   - Prometheus metrics from go-grpc-middleware's provider: started and
//     handled calls by service, method, type and code, and handling-time
//     histograms (grpc_server_handling_seconds, grpc_client_handling_seconds);
//   - OpenTelemetry tracing through otelgrpc's stats handlers, only when
//     StartTracing found an OTLP endpoint: otherwise no handler is installed
//     and no exporter runs;
//   - keepalive enforcement matching pkg/grpcclient's clients.
//
// ServerOptions go first in grpc.NewServer's options, before a service's
// own interceptors (the authn guard), so its refusals carry the request id.
package grpcserver

import (
	"context"
	"log/slog"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/requestid"
)

// Options say what a service's servers and clients report to.
type Options struct {
	// Log gets the "rpc" line of every unary call served; nil logs none.
	Log *slog.Logger
	// Metrics, when not nil, counts and times calls (NewMetrics).
	Metrics *Metrics
	// Tracing, when on (StartTracing), traces calls; nil or off: no tracing.
	Tracing *Tracing
	// Quiet, when it returns true for a failed call's status, logs that
	// call at info rather than warn: an answer the service already
	// explains elsewhere (consoleauth's "etcd unavailable", logged once by
	// its store).
	Quiet func(*status.Status) bool
}

// ServerOptions are the options of a grpc.NewServer: tracing's stats
// handler, then request id, metrics and the rpc log line as interceptors.
// A service adds its own chained interceptors after these with
// grpc.ChainUnaryInterceptor and grpc.ChainStreamInterceptor (not
// grpc.UnaryInterceptor, which would run before them).
func ServerOptions(o Options) []grpc.ServerOption {
	unary := []grpc.UnaryServerInterceptor{requestid.UnaryServerInterceptor()}
	stream := []grpc.StreamServerInterceptor{requestid.StreamServerInterceptor()}
	if o.Metrics != nil && o.Metrics.server != nil {
		unary = append(unary, o.Metrics.server.UnaryServerInterceptor())
		stream = append(stream, o.Metrics.server.StreamServerInterceptor())
	}
	if o.Log != nil {
		unary = append(unary, logUnary(o.Log, o.Quiet))
	}
	// Keepalive matching every client's (pkg/grpcclient).
	opts := append(grpcclient.ServerOptions(), grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	if h := o.Tracing.serverHandler(); h != nil {
		opts = append(opts, grpc.StatsHandler(h))
	}
	return opts
}

// DialOptions are the options of a client connection: tracing's stats
// handler, the request id and the client metrics. pkg/grpcclient sends
// request ids by itself; these add the rest to its Options.DialOptions.
func DialOptions(o Options) []grpc.DialOption {
	unary := []grpc.UnaryClientInterceptor{requestid.UnaryClientInterceptor()}
	stream := []grpc.StreamClientInterceptor{requestid.StreamClientInterceptor()}
	if o.Metrics != nil {
		unary = append(unary, o.Metrics.client.UnaryClientInterceptor())
		stream = append(stream, o.Metrics.client.StreamClientInterceptor())
	}
	opts := []grpc.DialOption{grpc.WithChainUnaryInterceptor(unary...), grpc.WithChainStreamInterceptor(stream...)}
	if h := o.Tracing.clientHandler(); h != nil {
		opts = append(opts, grpc.WithStatsHandler(h))
	}
	return opts
}

// latencyBuckets, in seconds: a CheckToken answers in about a millisecond,
// a GetConsole that asks a compute agent in tens, an etcd outage in seconds.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics are a service's gRPC server and client metrics, registered once
// in its registry and shared by all its servers and clients.
type Metrics struct {
	server *grpcprom.ServerMetrics
	client *grpcprom.ClientMetrics
}

// NewMetrics makes the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		server: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets))),
		client: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets))),
	}
	reg.MustRegister(m.server, m.client)
	return m
}

// NewClientMetrics is NewMetrics for a service that only calls others (a
// proxy calling consoleauth): client metrics only.
func NewClientMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{client: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets)))}
	reg.MustRegister(m.client)
	return m
}

// Initialize makes every method registered on srv appear in the server
// metrics at zero before its first call, so a dashboard and its alerts see
// the series from the start. Call it after registering the services.
func (m *Metrics) Initialize(srv *grpc.Server) {
	if m != nil && m.server != nil {
		m.server.InitializeMetrics(srv)
	}
}

// logUnary logs every unary call with its method, code and duration.
// Server faults log at warning level unless quiet says otherwise.
func logUnary(log *slog.Logger, quiet func(*status.Status) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		st := status.Convert(err)
		level := slog.LevelInfo
		switch st.Code() {
		case codes.Internal, codes.Unknown, codes.Unavailable, codes.DataLoss, codes.DeadlineExceeded:
			// A caller that gave up (its deadline, e.g. a proxy's handshake
			// in a reconnect storm) is not a server fault.
			if ctx.Err() == nil && (quiet == nil || !quiet(st)) {
				level = slog.LevelWarn
			}
		}
		attrs := []slog.Attr{
			slog.String(logging.KeyMethod, info.FullMethod),
			slog.String(logging.KeyCode, st.Code().String()),
			slog.Float64(logging.KeyDurationMS, float64(time.Since(start).Microseconds())/1000),
		}
		if err != nil {
			attrs = append(attrs, slog.String(logging.KeyError, st.Message()))
		}
		// Named here too, for a logger not made by logging.New (whose
		// handler adds it from ctx, once).
		if id := requestid.FromContext(ctx); id != "" {
			attrs = append(attrs, slog.String(logging.KeyRequestID, id))
		}
		log.LogAttrs(ctx, level, "rpc", attrs...)
		return resp, err
	}
}
