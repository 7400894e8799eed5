// Package grpcclient is how one vncgate service dials another: one
// *grpc.ClientConn over every replica of the callee.
//
// The address option is host:port or a comma-separated list of them
// (ParseEndpoints); each host is an IP address or a DNS name, and a name
// may resolve to several addresses. The ClientConn promises:
//   - round-robin over every address of every endpoint, names looked up
//     again every ResolveInterval and soon after a connection fails;
//   - client-side health checking (grpc.health.v1 Watch): an address whose
//     server says NOT_SERVING gets no calls until it says SERVING again (a
//     server without the health service counts as serving);
//   - the methods in Options.Retry, which must be idempotent, retried when
//     a replica answers UNAVAILABLE or dies mid-call, on a replica the call
//     has not tried while there is one: up to MaxAttempts attempts a few
//     tens of milliseconds apart, throttled as gRPC does when most calls
//     fail (no retry storm against a dead service);
//   - each certificate checked against the host written in the option
//     (the DNS name, not the address it resolved to);
//   - a lost address is dialled again at most about a second apart, so a
//     replica that comes back is used again within about a second;
//   - keepalive (ClientKeepalive): a replica that went silent without
//     closing the connection is dropped about 40 s after its last frame,
//     and calls in flight on it fail over as when it dies; servers take
//     ServerOptions, which match;
//   - it connects at once and never goes idle, so Ready says whether a
//     call could be served now, and one log line per change between
//     reachable and unreachable.
package grpcclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/health" // the client side of healthCheckConfig

	"github.com/vncgate/vncgate/pkg/requestid"
)

// Retry policy of Options.Retry's methods: a few attempts, short backoff
// (gRPC waits a random time up to the backoff), well within one second.
const (
	MaxAttempts    = 4
	initialBackoff = "0.02s"
	maxBackoff     = "0.2s"
)

// Reconnection: gRPC's default backoff grows to 120 s, so a replica back
// from a long outage would wait up to two minutes for its callers; a
// second at most between attempts brings it back into the rotation within
// about a second (a refused connect on a LAN costs next to nothing).
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

// minConnectTimeout bounds one connection attempt, TLS handshake included,
// to an address that does not answer at all.
const minConnectTimeout = 5 * time.Second

// DefaultResolveInterval is how often DNS names are looked up again.
const DefaultResolveInterval = 30 * time.Second

// Options configure Dial.
type Options struct {
	// Name is what the callee is called in logs and errors ("consoleauth").
	Name string
	// Retry are full method names ("/package.Service/Method") that are
	// idempotent: retried on another replica on UNAVAILABLE.
	Retry []string
	// HealthService is the service name asked of grpc.health.v1; "" (the
	// default) is the server as a whole.
	HealthService string
	// Log receives the reachability changes and DNS failures; nil discards.
	Log *slog.Logger
	// ResolveInterval is how often DNS names are looked up again; 0 is
	// DefaultResolveInterval.
	ResolveInterval time.Duration
	// LookupHost resolves a DNS name to IP addresses; nil is
	// net.DefaultResolver's (tests put their own).
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// DialOptions are added to Dial's own.
	DialOptions []grpc.DialOption
}

// Dial connects to the endpoints of option's value (see ParseEndpoints;
// option names it in errors) with creds, which must not be nil
// (insecure.NewCredentials() for plaintext). Only a bad value or bad
// options fail here; an unreachable callee shows up as failed calls and
// as Ready false.
func Dial(option, value string, creds credentials.TransportCredentials, opts Options) (*grpc.ClientConn, error) {
	endpoints, err := ParseEndpoints(option, value)
	if err != nil {
		return nil, err
	}
	return DialEndpoints(endpoints, creds, opts)
}

// DialEndpoints is Dial for endpoints already parsed.
func DialEndpoints(endpoints []Endpoint, creds credentials.TransportCredentials, opts Options) (*grpc.ClientConn, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("grpcclient: no endpoint")
	}
	if creds == nil {
		return nil, errors.New("grpcclient: no transport credentials")
	}
	if opts.Name == "" {
		opts.Name = "grpc"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.ResolveInterval <= 0 {
		opts.ResolveInterval = DefaultResolveInterval
	}
	if opts.LookupHost == nil {
		opts.LookupHost = net.DefaultResolver.LookupHost
	}
	sc, err := serviceConfig(opts)
	if err != nil {
		return nil, err
	}
	b := &endpointsBuilder{name: opts.Name, endpoints: endpoints, lookup: opts.LookupHost, interval: opts.ResolveInterval, log: opts.Log}
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(sc),
		// Idle, the ClientConn would report IDLE (not ready) on a quiet
		// proxy and reconnect only at the next call.
		grpc.WithIdleTimeout(0),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: minConnectTimeout}),
		grpc.WithKeepaliveParams(ClientKeepalive),
		// The caller's request id travels with every call (package requestid).
		grpc.WithChainUnaryInterceptor(trackTried, requestid.UnaryClientInterceptor()),
	}, opts.DialOptions...)
	cc, err := grpc.NewClient(scheme+":///"+opts.Name, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", opts.Name, endpointList(endpoints), err)
	}
	cc.Connect()
	go logReachability(cc, opts.Name, endpointList(endpoints), opts.Log)
	return cc, nil
}

// Ready reports whether cc can serve a call now: at least one address is
// connected and, where the server has a health service, serving.
func Ready(cc *grpc.ClientConn) bool { return cc.GetState() == connectivity.Ready }

// logReachability logs each change between reachable (READY) and
// unreachable (TRANSIENT_FAILURE: every address failed or is not
// serving) until cc closes. Connecting in between is not a change.
func logReachability(cc *grpc.ClientConn, name, endpoints string, log *slog.Logger) {
	const unknown, up, down = 0, 1, 2
	last := unknown
	state := cc.GetState()
	for {
		now := last
		switch state {
		case connectivity.Ready:
			now = up
		case connectivity.TransientFailure:
			now = down
		case connectivity.Shutdown:
			return
		}
		if now != last {
			if now == up {
				log.Info(name+" reachable", "endpoints", endpoints)
			} else {
				log.Warn(name+" unreachable: no replica connected and serving", "endpoints", endpoints)
			}
			last = now
		}
		if !cc.WaitForStateChange(context.Background(), state) {
			return
		}
		state = cc.GetState()
	}
}

func endpointList(endpoints []Endpoint) string {
	s := make([]string, len(endpoints))
	for i, e := range endpoints {
		s[i] = e.String()
	}
	return strings.Join(s, ",")
}

// serviceConfig is gRPC's service config for opts: round robin (ours,
// balancer.go), health checking, and the retry policy of opts.Retry.
func serviceConfig(opts Options) (string, error) {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []name      `json:"name"`
		RetryPolicy retryPolicy `json:"retryPolicy"`
	}
	sc := map[string]any{
		"loadBalancingConfig": []map[string]any{{balancerName: map[string]any{}}},
		"healthCheckConfig":   map[string]string{"serviceName": opts.HealthService},
	}
	if len(opts.Retry) > 0 {
		mc := methodConfig{RetryPolicy: retryPolicy{
			MaxAttempts: MaxAttempts, InitialBackoff: initialBackoff, MaxBackoff: maxBackoff,
			BackoffMultiplier: 2, RetryableStatusCodes: []string{"UNAVAILABLE"},
		}}
		for _, m := range opts.Retry {
			service, method, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
			if !strings.HasPrefix(m, "/") || !ok || service == "" || method == "" || strings.Contains(method, "/") {
				return "", fmt.Errorf("grpcclient: retry method %q: want /package.Service/Method", m)
			}
			mc.Name = append(mc.Name, name{Service: service, Method: method})
		}
		sc["methodConfig"] = []methodConfig{mc}
		// gRPC's retry throttling: -1 token per failed attempt, +1 per
		// success, retries only above 50 of 100. Once failures outnumber
		// successes by 50 (every replica failing), retries stop until
		// calls succeed again, so a failing service is not sent every
		// call MaxAttempts times; one bad replica of two, whose failed
		// attempts are each followed by a success, never gets there.
		sc["retryThrottling"] = map[string]any{"maxTokens": 100, "tokenRatio": 1}
	}
	b, err := json.Marshal(sc)
	return string(b), err
}
