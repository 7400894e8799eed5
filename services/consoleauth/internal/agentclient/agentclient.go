// Package agentclient calls the compute agents: it asks an instance's agent
// where its VNC server listens and whether a host and port still belong to
// it. It keeps one gRPC connection per agent address (pkg/grpcclient:
// health-checked, both calls retried on UNAVAILABLE, connected at once and
// never idle), and turns the agent's gRPC codes into sentinel errors for
// consoleauth's RPC edge.
//
// An agent that restarts is used again at once: a connection that failed
// is dialed anew as soon as the agent registers again in etcd (a newer
// Agent.Registration), rather than after the reconnect backoff it reached
// while the agent was down (at most about a second, grpcclient's).
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"sync"
	"time"

	"github.com/vncgate/vncgate/pkg/logging"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Errors of the agent calls, wrapped by errors whose message names the
// instance and host.
var (
	// ErrNotFound: the agent does not run the instance (agent NOT_FOUND).
	ErrNotFound = errors.New("instance not found on its compute host")
	// ErrNotReady: the instance is not running (agent FAILED_PRECONDITION).
	ErrNotReady = errors.New("instance not ready")
	// ErrNoConsole: the instance has no console of that type (agent INVALID_ARGUMENT).
	ErrNoConsole = errors.New("instance has no such console")
	// ErrUnreachable: the agent could not be reached or did not answer in time.
	ErrUnreachable = errors.New("compute agent unreachable")
	// ErrFailed: the agent answered with any other error.
	ErrFailed = errors.New("compute agent failed")
)

// DefaultTimeout bounds each agent call when Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Agent is the compute agent to call, as registered in etcd.
type Agent struct {
	// Host is the compute host's name, Address the agent's gRPC address.
	Host, Address string
	// Registration tells the agent's registrations apart: the etcd
	// revision of its registry.ComputeKey (0: unknown). When it grows, the
	// agent registered again, so a failed connection is dialed anew.
	Registration int64
}

// Options configures a Pool.
type Options struct {
	// Timeout bounds every call to an agent.
	Timeout time.Duration
	// TLS, when set, is the client side of mTLS to the agents; nil dials
	// plaintext.
	TLS credentials.TransportCredentials
	// DialOptions are added to each connection's own (the request id,
	// metrics and tracing of package grpcserver).
	DialOptions []grpc.DialOption
	// Log receives each agent's changes between reachable and not; nil
	// discards.
	Log *slog.Logger
}

// Pool holds one gRPC connection per agent address. It is safe for
// concurrent use.
type Pool struct {
	timeout time.Duration
	creds   credentials.TransportCredentials
	dial    []grpc.DialOption
	log     *slog.Logger

	mu     sync.Mutex
	conns  map[string]*agentConn
	closed bool
}

// agentConn is the connection to one agent address, and the newest
// registration seen for it.
type agentConn struct {
	conn         *grpc.ClientConn
	client       computeagentv1.ComputeAgentServiceClient
	registration int64
}

// New returns an empty pool.
func New(opts Options) *Pool {
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	creds := opts.TLS
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &Pool{timeout: opts.Timeout, creds: creds, dial: opts.DialOptions, log: opts.Log, conns: map[string]*agentConn{}}
}

// Console is where an instance's VNC server listens.
type Console struct {
	Host               string
	Port               int32
	InternalAccessPath string
}

// GetConsole asks the agent where the VNC server of an instance listens.
func (p *Pool) GetConsole(ctx context.Context, agent Agent, uuid, consoleType string) (Console, error) {
	client, err := p.client(agent)
	if err != nil {
		return Console{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := client.GetConsole(cctx, &computeagentv1.GetConsoleRequest{InstanceUuid: uuid, ConsoleType: consoleType})
	if err != nil {
		return Console{}, p.fail(ctx, err, agent, uuid, consoleType)
	}
	return Console{Host: resp.GetHost(), Port: resp.GetPort(), InternalAccessPath: resp.GetInternalAccessPath()}, nil
}

// ValidateConsolePort asks the agent whether host and port are still the
// instance's VNC server. When not, reason says why.
func (p *Pool) ValidateConsolePort(ctx context.Context, agent Agent, uuid, consoleType, host string, port int32) (valid bool, reason string, err error) {
	client, err := p.client(agent)
	if err != nil {
		return false, "", err
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := client.ValidateConsolePort(cctx, &computeagentv1.ValidateConsolePortRequest{
		InstanceUuid: uuid, ConsoleType: consoleType, Host: host, Port: port,
	})
	if err != nil {
		return false, "", p.fail(ctx, err, agent, uuid, consoleType)
	}
	return resp.GetValid(), resp.GetReason(), nil
}

// Close closes every connection; later calls fail.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for addr, c := range p.conns {
		errs = append(errs, c.conn.Close())
		delete(p.conns, addr)
	}
	return errors.Join(errs...)
}

// client returns the cached connection to the agent's address, creating it
// (lazily connected) on first use, and again when the agent registered
// anew while the connection is failing.
func (p *Pool) client(agent Agent) (computeagentv1.ComputeAgentServiceClient, error) {
	var stale *grpc.ClientConn
	defer func() {
		if stale != nil {
			stale.Close() // nothing waits on it: its calls fail at once
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("%w: client pool closed", ErrUnreachable)
	}
	c, ok := p.conns[agent.Address]
	if ok && agent.Registration > c.registration {
		// In TRANSIENT_FAILURE every call fails at once until the next
		// attempt, up to a second away; a new connection tries
		// now. Other states are kept: READY works, IDLE connects on the
		// next call, CONNECTING is trying already.
		if c.conn.GetState() == connectivity.TransientFailure {
			stale = c.conn
			delete(p.conns, agent.Address)
			ok = false
		} else {
			c.registration = agent.Registration
		}
	}
	if !ok {
		// One ClientConn per agent, as every service dials another:
		// health-checked, idempotent calls retried, reconnects at most
		// about a second apart, connected at once and never idle (so Down
		// follows the agent between calls).
		conn, err := grpcclient.Dial("compute agent address", agent.Address, p.creds, grpcclient.Options{
			Name:        "compute agent " + agent.Host,
			Retry:       retried,
			Log:         p.log,
			DialOptions: p.dial,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: agent address %q: %v", ErrUnreachable, agent.Address, err)
		}
		c = &agentConn{conn: conn, client: computeagentv1.NewComputeAgentServiceClient(conn), registration: agent.Registration}
		p.conns[agent.Address] = c
	}
	return c.client, nil
}

// retried are the agent's methods, both reads: retried when the agent
// answers UNAVAILABLE or drops the call.
var retried = []string{
	computeagentv1.ComputeAgentService_GetConsole_FullMethodName,
	computeagentv1.ComputeAgentService_ValidateConsolePort_FullMethodName,
}

// Down reports whether the connection to the agent's address is failing
// now (every connection attempt failed, or the agent's health service says
// NOT_SERVING, as while it stops): a claim it published is not to be taken
// for its answer then. It makes the connection when there is none yet, so
// that its state follows the agent from then on; a new connection is not
// down.
func (p *Pool) Down(agent Agent) bool {
	if _, err := p.client(agent); err != nil {
		return true
	}
	p.mu.Lock()
	c, ok := p.conns[agent.Address]
	p.mu.Unlock()
	return ok && c.conn.GetState() == connectivity.TransientFailure
}

// fail maps an agent's gRPC error to a sentinel, with a message that names
// the instance and the compute host.
func (p *Pool) fail(ctx context.Context, err error, agent Agent, uuid, consoleType string) error {
	computeHost, address := agent.Host, agent.Address
	if ctx.Err() != nil {
		return fmt.Errorf("compute agent call: %w", ctx.Err())
	}
	st := status.Convert(err)
	var kind error
	var msg string
	switch st.Code() {
	case codes.NotFound:
		kind, msg = ErrNotFound, fmt.Sprintf("instance %s not found on compute host %s", uuid, computeHost)
	case codes.FailedPrecondition:
		kind, msg = ErrNotReady, fmt.Sprintf("instance %s is not ready: %s", uuid, st.Message())
	case codes.InvalidArgument:
		kind, msg = ErrNoConsole, fmt.Sprintf("instance %s has no %s console: %s", uuid, consoleType, st.Message())
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		// The message reaches users (409/503 bodies): no internal address
		// or transport detail, which go to the log instead.
		kind, msg = ErrUnreachable, fmt.Sprintf("compute agent of host %s unreachable", computeHost)
		if p.log != nil {
			p.log.LogAttrs(ctx, slog.LevelDebug, "compute agent call failed", slog.String(logging.KeyHost, computeHost),
				slog.String("address", address), slog.String(logging.KeyError, st.Message()))
		}
	default:
		kind, msg = ErrFailed, fmt.Sprintf("compute agent of host %s failed: %s: %s", computeHost, st.Code(), st.Message())
	}
	return &detailError{kind: kind, msg: msg}
}

// detailError carries a sentinel for errors.Is and a message of its own.
type detailError struct {
	kind error
	msg  string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.kind }
