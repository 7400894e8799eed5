package authserver

import (
	"context"
	"errors"

	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the service itself, beside those of the token store and the
// agent client.
var (
	// ErrInvalidArgument: the request is malformed (REST 400).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrTypeDisabled: the console type is valid but not enabled here (501).
	ErrTypeDisabled = errors.New("console type not enabled")
	// ErrWrongType: the token is for another console type (403).
	ErrWrongType = errors.New("token is for another console type")
	// ErrConsoleMoved: the instance's VNC server is no longer where the
	// token points (409).
	ErrConsoleMoved = errors.New("console moved")
	// ErrAgentGone: CheckToken could not ask the instance's agent (503).
	ErrAgentGone = errors.New("compute agent unavailable")
	// ErrNotOwner: a compute host acted for an instance it does not run
	// (403).
	ErrNotOwner = errors.New("not the instance's compute host")
)

// Answers that stand for errors whose own text is not the caller's
// business: etcd's errors name internal keys and addresses, and an
// unexpected fault says nothing a caller can act on. The detail goes to
// the log instead (the store logs an etcd outage once; Server.answer logs
// an internal fault).
const (
	// UnavailableMessage answers every call while etcd cannot serve
	// (codes.Unavailable, REST 503).
	UnavailableMessage = "the console service is temporarily unavailable"
	// InternalMessage answers an error no entry of codeTable matches
	// (codes.Internal, REST 500).
	InternalMessage = "internal error"
)

// codeTable maps domain errors to gRPC codes: the one place that does. The
// first entry that errors.Is matches wins; anything else is INTERNAL, with
// InternalMessage.
var codeTable = []struct {
	err  error
	code codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrTypeDisabled, codes.Unimplemented},
	{ErrWrongType, codes.PermissionDenied},
	{ErrConsoleMoved, codes.FailedPrecondition},
	{ErrAgentGone, codes.Unavailable},
	{ErrNotOwner, codes.PermissionDenied},
	{tokenstore.ErrNotFound, codes.NotFound},
	{tokenstore.ErrMalformedToken, codes.InvalidArgument},
	{tokenstore.ErrUnknownReason, codes.InvalidArgument},
	{tokenstore.ErrUnknownInstance, codes.NotFound},
	{tokenstore.ErrComputeDown, codes.FailedPrecondition},
	{tokenstore.ErrStoreUnavailable, codes.Unavailable},
	{agentclient.ErrNotFound, codes.NotFound},
	{agentclient.ErrNotReady, codes.FailedPrecondition},
	{agentclient.ErrNoConsole, codes.InvalidArgument},
	// GetConsoleURL reports an unreachable agent as ErrComputeDown (409)
	// and CheckToken as ErrAgentGone (503); this entry is the fallback.
	{agentclient.ErrUnreachable, codes.Unavailable},
	{agentclient.ErrFailed, codes.Internal},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus turns a domain error into a gRPC status error carrying the
// error's message, except for the errors answered with UnavailableMessage
// or InternalMessage.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, tokenstore.ErrStoreUnavailable) {
		return status.Error(codes.Unavailable, UnavailableMessage)
	}
	for _, e := range codeTable {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, InternalMessage)
}

// answer is toStatus for the service's methods: an internal fault, whose
// detail the caller does not get, is logged.
func (s *Server) answer(ctx context.Context, err error) error {
	st := toStatus(err)
	if a := status.Convert(st); a.Code() == codes.Internal && a.Message() == InternalMessage {
		s.log.ErrorContext(ctx, "internal error", "error", err)
	}
	return st
}

// detailError carries a sentinel for errors.Is and a message of its own, so
// a client reads `unsupported protocol "rdp": only vnc is served` rather
// than a sentinel's text followed by the detail.
type detailError struct {
	kind error
	msg  string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.kind }

func detail(kind error, msg string) error { return &detailError{kind: kind, msg: msg} }
