// Package requestid carries one id per request from where it is born (the
// REST edge, or a proxy for a console session) through gRPC metadata to
// consoleauth and the compute agent, so one grep finds a request's lines in
// every service's log.
package requestid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"regexp"

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
