// Package tokencheck is the proxies' client of consoleauth: it checks a
// console token and sorts every failure into one of a few reasons a proxy can
// answer precisely (HTTP status, WebSocket close code, XVP status line).
package tokencheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Reasons a check fails. Every error from Check wraps exactly one.
var (
	// ErrInvalid: unknown, expired, revoked or already used token.
	ErrInvalid = errors.New("console token invalid or expired")
	// ErrWrongType: a token minted for another console type.
	ErrWrongType = errors.New("console token is for another console type")
	// ErrMoved: the instance no longer listens where the token says
	// (stopped, moved, or its port changed).
	ErrMoved = errors.New("console no longer available at the token's address")
	// ErrUnavailable: consoleauth, etcd or the compute agent cannot answer.
	ErrUnavailable = errors.New("console service unavailable")
)

// DefaultTimeout bounds one check, consoleauth's own etcd and agent calls included.
const DefaultTimeout = 5 * time.Second

// Checker checks tokens against consoleauth.
type Checker struct {
	client  consoleauthv1.ConsoleAuthServiceClient
	timeout time.Duration
}

// New returns a Checker using conn; timeout <= 0 means DefaultTimeout.
func New(conn grpc.ClientConnInterface, timeout time.Duration) *Checker {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Checker{client: consoleauthv1.NewConsoleAuthServiceClient(conn), timeout: timeout}
}

// Dial connects to consoleauth at addr, with mutual TLS when cfg is not nil
// (tlsconfig.Files.Client of the grpc_* group), plaintext when it is.
// The connection is lazy: an unreachable consoleauth shows up as
// ErrUnavailable on Check, not here.
func Dial(addr string, cfg *tls.Config) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(tlsconfig.TransportCredentials(cfg)))
	if err != nil {
		return nil, fmt.Errorf("consoleauth %s: %w", addr, err)
	}
	return conn, nil
}

// Check returns where token connects to, if it is valid for consoleType
// ("novnc" or "xvpvnc").
func (c *Checker) Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no token", ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: consoleType})
	if err != nil {
		return nil, classify(err)
	}
	info := resp.GetConnectInfo()
	if info.GetHost() == "" || info.GetPort() <= 0 || info.GetPort() > 65535 {
		return nil, fmt.Errorf("%w: consoleauth returned no usable address", ErrUnavailable)
	}
	return info, nil
}

// classify maps consoleauth's gRPC codes (see its proto) to reasons.
func classify(err error) error {
	st := status.Convert(err)
	var reason error
	switch st.Code() {
	case codes.NotFound, codes.InvalidArgument:
		reason = ErrInvalid
	case codes.PermissionDenied:
		reason = ErrWrongType
	case codes.FailedPrecondition:
		reason = ErrMoved
	default:
		reason = ErrUnavailable
	}
	return fmt.Errorf("%w: %s", reason, st.Message())
}
