// Package tokencheck is the proxies' client of consoleauth: it checks a
// console token and sorts every failure into one of a few reasons a proxy can
// answer precisely (HTTP status, WebSocket close code, XVP status line).
//
// Dial is how every vncgate service connects to consoleauth: every replica
// of consoleauth_address (a comma-separated list; DNS names may resolve to
// several addresses) in round-robin, health-checked, consoleauth's
// idempotent calls retried on another replica (package grpcclient).
// WriteUnreachable turns a proxy's readiness red while no replica can
// answer. A Checker has at most MaxInFlight checks at consoleauth; in a
// burst the others queue, each within its caller's deadline (a proxy's
// handshake), so a reconnect storm waits instead of failing.
package tokencheck

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/prometheus/client_golang/prometheus"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
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

// DefaultTimeout bounds one check whose context has no deadline,
// consoleauth's own etcd and agent calls included.
const DefaultTimeout = 5 * time.Second

// MaxInFlight bounds the checks one Checker has at consoleauth at once;
// more wait their turn, first come first served, each for as long as its
// context allows. A burst (a reconnect storm after a proxy restart: every
// client at once) sent all at once would make consoleauth, etcd and the
// agent share their CPU among all of its checks, so every check would take
// about as long as the whole burst and, past the handshake timeout, nearly
// all would fail together; in turn, the first ones finish at the pace of
// one check and only the last ones wait long. A check costs consoleauth
// and etcd well under a millisecond of CPU, so a few in flight keep them
// busy; 128 still do when each check waits ~100 ms for a CPU on a loaded
// host (1,280 checks/s), and leave room for several replicas.
const MaxInFlight = 128

// Checker checks tokens against consoleauth. Safe for concurrent use.
type Checker struct {
	client  consoleauthv1.ConsoleAuthServiceClient
	timeout time.Duration
	slots   chan struct{} // a semaphore of MaxInFlight; its waiters queue in order
	waiting atomic.Int64  // checks waiting for a slot
}

// New returns a Checker using conn; timeout bounds a check whose context
// has no deadline, and <= 0 means DefaultTimeout.
func New(conn grpc.ClientConnInterface, timeout time.Duration) *Checker {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Checker{client: consoleauthv1.NewConsoleAuthServiceClient(conn), timeout: timeout, slots: make(chan struct{}, MaxInFlight)}
}

// Option is the name of the address option, in errors.
const Option = "consoleauth_address"

// AddressHelp describes the option's value, for every service's help.
const AddressHelp = "host:port, or a comma-separated list of replicas; a DNS name may resolve to several. " +
	"Calls go round-robin to the replicas connected and serving (grpc.health.v1); idempotent ones are retried on another"

// Idempotent are consoleauth's calls that may be retried on another
// replica: reads, and a revocation (revoking again ends nothing more).
var Idempotent = []string{
	consoleauthv1.ConsoleAuthService_CheckToken_FullMethodName,
	consoleauthv1.ConsoleAuthService_GetConsoleAuthToken_FullMethodName,
	consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName,
}

// Dial connects to consoleauth at addresses (consoleauth_address: host:port
// or a comma-separated list), with mutual TLS when cfg is not nil
// (tlsconfig.Files.Client of the grpc_* group), plaintext when it is.
// Only a bad list fails here (the error names the entry); an unreachable
// consoleauth shows up as ErrUnavailable on Check.
func Dial(addresses string, cfg *tls.Config) (*grpc.ClientConn, error) {
	return DialCredentials(addresses, tlsconfig.TransportCredentials(cfg), nil)
}

// DialCredentials is Dial with gRPC credentials (tlsconfig.Files'
// ClientCredentials reload the CA too); log gets reachability changes;
// opts are added (grpcserver.DialOptions: client metrics, tracing).
func DialCredentials(addresses string, creds credentials.TransportCredentials, log *slog.Logger, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpcclient.Dial(Option, addresses, creds, grpcclient.Options{Name: "consoleauth", Retry: Idempotent, Log: log, DialOptions: opts})
}

// WriteUnreachable answers a proxy's health check with 503
// {"status": "consoleauth unreachable", "sessions": N} and returns true
// when no consoleauth replica of conn can answer now (none connected and
// serving), so that a load balancer sends new users to another proxy; it
// writes nothing and returns false otherwise.
func WriteUnreachable(w http.ResponseWriter, conn *grpc.ClientConn, sessions int) bool {
	if grpcclient.Ready(conn) {
		return false
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusServiceUnavailable)
	json.NewEncoder(w).Encode(map[string]any{"status": "consoleauth unreachable", "sessions": sessions})
	return true
}

// Check returns where token connects to, if it is valid for consoleType
// ("novnc" or "xvpvnc").
//
// ctx's deadline, when it has one, is the check's only bound: a proxy
// passes its handshake's, so in a burst (a reconnect storm after a
// restart) a check waits its turn (MaxInFlight) for as long as the client
// waits for its console, rather than failing at a shorter fixed timeout
// while the client would still have waited. Without a deadline the
// Checker's timeout bounds it. A check whose context ends while it waits
// for its turn fails with ErrUnavailable and costs consoleauth nothing.
func (c *Checker) Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no token", ErrInvalid)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	select {
	case c.slots <- struct{}{}:
	default:
		c.waiting.Add(1)
		select {
		case c.slots <- struct{}{}:
			c.waiting.Add(-1)
		case <-ctx.Done():
			c.waiting.Add(-1)
			return nil, fmt.Errorf("%w: %d checks in flight: no turn before the deadline: %v", ErrUnavailable, MaxInFlight, ctx.Err())
		}
	}
	defer func() { <-c.slots }()
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

// Register exports the checks in flight to consoleauth and those waiting
// for their turn (MaxInFlight) as gauges: a queue that stays long says
// consoleauth (or etcd behind it) cannot keep up with the sessions asked.
func (c *Checker) Register(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "vncgate", Subsystem: "proxy", Name: "token_checks_in_flight",
			Help: fmt.Sprintf("Token checks sent to consoleauth and not answered yet (at most %d).", MaxInFlight),
		}, func() float64 { return float64(len(c.slots)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "vncgate", Subsystem: "proxy", Name: "token_checks_waiting",
			Help: fmt.Sprintf("Token checks waiting for their turn: %d are in flight already.", MaxInFlight),
		}, func() float64 { return float64(c.waiting.Load()) }),
	)
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

// CheckPlaintextLinks refuses a proxy's links that would carry plaintext
// off loopback unless allowed ([vncgate] allow_plaintext): to consoleauth
// (addresses, an option value) without gRPC TLS, and to etcd without etcd
// TLS.
func CheckPlaintextLinks(addresses string, grpcTLS bool, etcdEndpoints []string, etcdTLS, allowed bool) error {
	if !grpcTLS {
		if err := tlsconfig.CheckPlaintextEndpoints(Option, grpcclient.Entries(addresses), allowed); err != nil {
			return err
		}
	}
	if !etcdTLS {
		return tlsconfig.CheckPlaintextEndpoints("etcd_endpoints", etcdEndpoints, allowed)
	}
	return nil
}
