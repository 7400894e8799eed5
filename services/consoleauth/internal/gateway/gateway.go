// Package gateway is consoleauth's REST surface, shaped like Nova's compute
// API: grpc-gateway routes that call the gRPC server through a client
// connection (so its interceptors run for REST too), Nova's snake_case JSON,
// Nova-style error bodies such as {"badRequest": {"code": 400, "message":
// "..."}}, plus /openapi.json, /healthz and /metrics.
//
// Every route but /healthz and /openapi.json needs a caller (see Auth): a
// client certificate, a bearer key or a Keystone token; otherwise 401
// {"unauthorized": ...} with WWW-Authenticate. The caller reaches the gRPC
// server as metadata only the gateway can write (no client header is
// forwarded but those below), and the server's guard answers 403
// {"forbidden": ...} for a role that may not call the route. A Host header
// that does not name the API is 400 (DNS rebinding), a POST or PUT body
// that is not application/json 415 (cross-site form posts).
//
// Every request gets an id: the caller's X-Request-Id when valid
// (requestid.Valid), else a new one. It is answered in X-Request-Id, sent to
// the gRPC server as x-request-id metadata (only after validation) and
// logged with every line of the request, here, in consoleauth's rpc line and
// in the compute agent's. A caller's W3C traceparent and tracestate go on
// as they are, so that with tracing on (otlp_endpoint) the call's spans join
// the caller's trace.
//
// The error handler here is the one place that maps gRPC codes to HTTP.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/requestid"
	"github.com/vncgate/vncgate/services/consoleauth/internal/openapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// DefaultMaxBodyBytes caps request bodies when Options.MaxBodyBytes is zero.
const DefaultMaxBodyBytes = 64 << 10

// Options configures the handler.
type Options struct {
	// Health reports whether the service can serve (etcd answers and it is
	// not shutting down); /healthz answers 503 with its error.
	Health func(context.Context) error
	// Metrics, when set, is served on /metrics.
	Metrics http.Handler
	// MaxBodyBytes caps request bodies.
	MaxBodyBytes int64
	// Auth authenticates callers; its zero value refuses every one.
	Auth Auth
	Log  *slog.Logger
}

// New returns the REST handler calling the gRPC service over conn.
func New(ctx context.Context, conn *grpc.ClientConn, opts Options) (http.Handler, error) {
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	handleError := errorHandler(opts.Log, opts.Auth.challenges())
	gw := runtime.NewServeMux(
		// No client header becomes metadata but W3C trace context: the
		// caller is what Auth.metadataOf says, nothing else, and the gRPC
		// server's span of the call joins the caller's trace.
		runtime.WithIncomingHeaderMatcher(func(h string) (string, bool) {
			switch h = strings.ToLower(h); h {
			case "traceparent", "tracestate":
				return h, true
			}
			return "", false
		}),
		runtime.WithMetadata(opts.Auth.metadataOf),
		// The request id (requestid.HTTP below) goes on as x-request-id.
		runtime.WithMetadata(requestid.Metadata),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &jsonMarshaler{JSONPb: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}, maxBody: opts.MaxBodyBytes}),
		runtime.WithErrorHandler(handleError),
		runtime.WithRoutingErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
			handleError(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: code, Err: errors.New(http.StatusText(code))})
		}),
	)
	if err := consoleauthv1.RegisterConsoleAuthServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register gateway: %w", err)
	}
	if err := consoleauthv1.RegisterOperationsServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register operations gateway: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle("/", opts.Auth.protect(microversion(limitBody(gw, opts.MaxBodyBytes)), opts.Log))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.JSON)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		hctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if opts.Health != nil {
			if err := opts.Health(hctx); err != nil {
				writeFault(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	})
	if opts.Metrics != nil {
		// Any authenticated caller may read the metrics (Prometheus sends
		// a bearer key or a certificate): they name instances' hosts.
		mux.Handle("GET /metrics", opts.Auth.protect(opts.Metrics, opts.Log))
	}
	// Every request has an id: the caller's valid X-Request-Id or a new
	// one, answered in X-Request-Id and logged on each of its lines.
	return requestid.HTTP(mux), nil
}

// httpStatus maps a gRPC code to an HTTP status, the way Nova answers.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.FailedPrecondition:
		return http.StatusConflict
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	default:
		return http.StatusInternalServerError
	}
}

// faultNames are the keys of Nova's error bodies (nova.api.openstack.wsgi.Fault).
var faultNames = map[int]string{
	http.StatusBadRequest:            "badRequest",
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "itemNotFound",
	http.StatusMethodNotAllowed:      "badMethod",
	http.StatusConflict:              "conflictingRequest",
	http.StatusRequestEntityTooLarge: "overLimit",
	http.StatusUnsupportedMediaType:  "badMediaType",
	http.StatusTooManyRequests:       "overLimit",
	http.StatusNotImplemented:        "notImplemented",
	http.StatusServiceUnavailable:    "serviceUnavailable",
}

type fault struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeFault writes a Nova-style error body, e.g.
// {"itemNotFound": {"code": 404, "message": "..."}}.
func writeFault(w http.ResponseWriter, code int, msg string) {
	name, ok := faultNames[code]
	if !ok {
		name = "computeFault"
	}
	body, _ := json.Marshal(map[string]fault{name: {Code: code, Message: msg}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

// errorHandler answers every error of the gateway: the gRPC service's
// status errors, the gateway's own (malformed bodies arrive as
// INVALID_ARGUMENT) and routing errors (unknown path, wrong method), which
// the routing error handler passes as *runtime.HTTPStatusError.
func errorHandler(log *slog.Logger, challenges []string) runtime.ErrorHandlerFunc {
	return func(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
		var routing *runtime.HTTPStatusError
		if errors.As(err, &routing) {
			msg := http.StatusText(routing.HTTPStatus)
			if routing.HTTPStatus == http.StatusNotFound {
				msg = fmt.Sprintf("no such resource: %s %s", r.Method, r.URL.Path)
			} else if routing.HTTPStatus == http.StatusMethodNotAllowed {
				msg = fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)
			}
			writeFault(w, routing.HTTPStatus, msg)
			return
		}
		st := status.Convert(err)
		code := httpStatus(st.Code())
		if code == http.StatusInternalServerError {
			log.WarnContext(ctx, "rest request failed", "method", r.Method+" "+pattern(ctx),
				"code", st.Code().String(), "error", st.Message())
		}
		if code == http.StatusUnauthorized {
			for _, c := range challenges {
				w.Header().Add("WWW-Authenticate", c)
			}
		}
		writeFault(w, code, st.Message())
	}
}

// pattern is the route pattern (never the path: it may hold a token).
func pattern(ctx context.Context) string {
	p, _ := runtime.HTTPPathPattern(ctx)
	return p
}

// jsonMarshaler is grpc-gateway's protojson marshaler whose decoder says
// what went wrong with a body in words a REST client understands.
type jsonMarshaler struct {
	*runtime.JSONPb
	maxBody int64
}

func (m *jsonMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	d := m.JSONPb.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		err := d.Decode(v)
		var tooLarge *http.MaxBytesError
		switch {
		case err == nil, errors.Is(err, io.EOF):
			// io.EOF is an empty body: the service then reports what is
			// missing from it.
			return err
		case errors.As(err, &tooLarge):
			return fmt.Errorf("request body larger than %d bytes", m.maxBody)
		default:
			return fmt.Errorf("malformed JSON request body: %v", err)
		}
	})
}

// limitBody caps request bodies: a declared length over the cap is refused
// at once (413); a chunked body is cut at the cap (400 from the decoder).
func limitBody(next http.Handler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			writeFault(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}
