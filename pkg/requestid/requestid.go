// Package requestid carries one id per request from where it is born (the
// REST edge, or a proxy for a console session) through gRPC metadata to
// consoleauth and the compute agent, so one grep finds a request's lines in
// every service's log.
//
// HTTP takes it at the REST edge (X-Request-Id), Metadata hands it to
// grpc-gateway, the server interceptors take it from gRPC metadata (or make
// one) and the client interceptors send it on; package logging writes the
// id of a record's context as request_id, and package grpcserver chains the
// interceptors with the rest of a service's gRPC kit.
package requestid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"regexp"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// MetadataKey is the gRPC metadata (and HTTP header, X-Request-Id) name.
const MetadataKey = "x-request-id"

// LogKey is the log attribute every service names it by.
const LogKey = "request_id"

// valid bounds what a caller may hand in: anything else is replaced.
var valid = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// New returns a fresh random id (16 hex characters).
func New() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Valid reports whether id may be taken from a caller.
func Valid(id string) bool { return valid.MatchString(id) }

type contextKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// FromContext returns the id ctx carries, or "".
func FromContext(ctx context.Context) string {
	id, _ := ctx.Value(contextKey{}).(string)
	return id
}

// Outgoing returns ctx with its id (if any) added to the outgoing gRPC metadata.
func Outgoing(ctx context.Context) context.Context {
	if id := FromContext(ctx); id != "" {
		return metadata.AppendToOutgoingContext(ctx, MetadataKey, id)
	}
	return ctx
}

// Incoming returns the valid id in ctx's incoming gRPC metadata, or "".
func Incoming(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, id := range md.Get(MetadataKey) {
		if Valid(id) {
			return id
		}
	}
	return ""
}

// Header is the HTTP header the REST edge takes an id from and answers it in.
const Header = "X-Request-Id"

// orNew returns id when it may be taken from a caller, else a fresh one.
func orNew(id string) string {
	if Valid(id) {
		return id
	}
	return New()
}

// UnaryServerInterceptor puts the caller's valid id, or a new one, in the
// call's context (FromContext). It is not echoed in response headers: a
// header sent with an error makes the call committed, and gRPC then no
// longer retries an UNAVAILABLE answer on another replica.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(incomingContext(ctx), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &stream{ServerStream: ss, ctx: incomingContext(ss.Context())})
	}
}

func incomingContext(ctx context.Context) context.Context {
	return NewContext(ctx, orNew(Incoming(ctx)))
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

// UnaryClientInterceptor sends the id of a call's context (Outgoing), unless
// the call's metadata already carries one.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(outgoingOnce(ctx), method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor is UnaryClientInterceptor for streams.
func StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(outgoingOnce(ctx), desc, cc, method, opts...)
	}
}

func outgoingOnce(ctx context.Context) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(MetadataKey)) > 0 {
		return ctx
	}
	return Outgoing(ctx)
}

// HTTP is the REST edge's middleware: it takes the request's valid
// X-Request-Id or makes one, puts it in the request's context and answers
// it in the response's X-Request-Id before next writes anything.
func HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := orNew(r.Header.Get(Header))
		w.Header().Set(Header, id)
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), id)))
	})
}

// Metadata is the gRPC metadata carrying the id of ctx, for grpc-gateway's
// runtime.WithMetadata: the gateway forwards no client header itself.
func Metadata(ctx context.Context, _ *http.Request) metadata.MD {
	if id := FromContext(ctx); id != "" {
		return metadata.Pairs(MetadataKey, id)
	}
	return nil
}
