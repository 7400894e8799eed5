// Package grpcapi serves the compute agent's gRPC API
// (vncgate.computeagent.v1.ComputeAgentService) from a driver: where an
// instance's VNC server listens, and whether a host and port still are it.
//
// It promises: only consoleauth may call it (Policy, applied by the
// server's authn.Guard); the host it answers is the one proxies dial (a driver's empty
// or unspecified listen address becomes server_proxyclient_address); driver
// errors become gRPC codes in one table (errorCodes); a refused check says
// why in ValidateConsolePortResponse.reason.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Policy is who may call the agent: only consoleauth. The agent tells
// where VNC servers listen, which nobody else needs to know.
var Policy = authn.Policy{
	computeagentv1.ComputeAgentService_GetConsole_FullMethodName:          {authn.RoleConsoleAuth},
	computeagentv1.ComputeAgentService_ValidateConsolePort_FullMethodName: {authn.RoleConsoleAuth},
}

// MaxRecvMsgSize caps a request: the agent's are a few dozen bytes.
const MaxRecvMsgSize = 64 << 10

// errInvalidArgument marks a request the agent refuses to look at.
var errInvalidArgument = errors.New("invalid argument")

// errorCodes is the one place domain errors become gRPC codes; anything
// else is INTERNAL.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{errInvalidArgument, codes.InvalidArgument},
	{driver.ErrNotFound, codes.NotFound},
	{driver.ErrNotRunning, codes.FailedPrecondition},
	{driver.ErrNoConsole, codes.InvalidArgument},
	{driver.ErrUnavailable, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

func toStatus(err error) error {
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// Server implements computeagentv1.ComputeAgentServiceServer.
type Server struct {
	computeagentv1.UnimplementedComputeAgentServiceServer
	driver             driver.Driver
	proxyClientAddress string
	log                *slog.Logger
}

// New returns a server answering from d. proxyClientAddress is the host
// proxies use to reach VNC servers on this host (Nova's
// server_proxyclient_address).
func New(d driver.Driver, proxyClientAddress string, log *slog.Logger) *Server {
	return &Server{driver: d, proxyClientAddress: proxyClientAddress, log: log}
}

// GetConsole returns where the instance's VNC server listens.
func (s *Server) GetConsole(ctx context.Context, req *computeagentv1.GetConsoleRequest) (*computeagentv1.GetConsoleResponse, error) {
	c, err := s.console(ctx, req.GetInstanceUuid(), req.GetConsoleType())
	if err != nil {
		s.logError("get console", req.GetInstanceUuid(), err)
		return nil, toStatus(err)
	}
	s.log.DebugContext(ctx, "get console", "instance", req.GetInstanceUuid(), "vnc", net.JoinHostPort(c.Host, fmt.Sprint(c.Port)))
	return &computeagentv1.GetConsoleResponse{Host: c.Host, Port: c.Port, InternalAccessPath: c.InternalAccessPath}, nil
}

// ValidateConsolePort says whether host AND port are the instance's VNC
// server now. An instance this host does not run, that is stopped or that
// has no console answers valid=false with the reason; only a failure to
// know (UNAVAILABLE and the like) is an error.
func (s *Server) ValidateConsolePort(ctx context.Context, req *computeagentv1.ValidateConsolePortRequest) (*computeagentv1.ValidateConsolePortResponse, error) {
	uuid := req.GetInstanceUuid()
	if req.GetHost() == "" {
		return nil, toStatus(fmt.Errorf("%w: host is empty", errInvalidArgument))
	}
	if p := req.GetPort(); p < 1 || p > 65535 {
		return nil, toStatus(fmt.Errorf("%w: port %d out of range 1-65535", errInvalidArgument, p))
	}
	c, err := s.console(ctx, uuid, req.GetConsoleType())
	var reason string
	switch {
	case errors.Is(err, driver.ErrNotFound), errors.Is(err, driver.ErrNotRunning), errors.Is(err, driver.ErrNoConsole):
		reason = err.Error()
	case err != nil:
		s.logError("validate console port", uuid, err)
		return nil, toStatus(err)
	default:
		// The same judgement consoleauth makes from the instance's claim.
		reason = registry.LocationConsole{Host: c.Host, Port: c.Port}.Mismatch(req.GetHost(), req.GetPort())
	}
	if reason != "" {
		s.log.InfoContext(ctx, "console port refused", "instance", uuid, "vnc", net.JoinHostPort(req.GetHost(), fmt.Sprint(req.GetPort())), "reason", reason)
		return &computeagentv1.ValidateConsolePortResponse{Valid: false, Reason: reason}, nil
	}
	return &computeagentv1.ValidateConsolePortResponse{Valid: true}, nil
}

// Console is what GetConsole answers for an instance, as a driver error
// (driver.ErrNotFound and the like) when there is none: what the agent
// publishes in the instance's claim (package registration).
func (s *Server) Console(ctx context.Context, uuid string) (driver.Console, error) {
	return s.console(ctx, uuid, "")
}

// console checks the request and asks the driver, resolving the host.
func (s *Server) console(ctx context.Context, uuid, consoleType string) (driver.Console, error) {
	if uuid == "" {
		return driver.Console{}, fmt.Errorf("%w: instance_uuid is empty", errInvalidArgument)
	}
	if len(uuid) > 128 {
		return driver.Console{}, fmt.Errorf("%w: instance_uuid longer than 128 bytes", errInvalidArgument)
	}
	switch consoleType {
	case "", "novnc", "xvpvnc":
	default:
		return driver.Console{}, fmt.Errorf("%w: console type %q not supported (want novnc or xvpvnc)", errInvalidArgument, consoleType)
	}
	c, err := s.driver.Console(ctx, uuid)
	if err != nil {
		return driver.Console{}, err
	}
	if c.Port < 1 || c.Port > 65535 {
		return driver.Console{}, fmt.Errorf("instance %s: vnc port %d: %w", uuid, c.Port, driver.ErrNoConsole)
	}
	if ip := net.ParseIP(c.Host); c.Host == "" || ip != nil && ip.IsUnspecified() {
		c.Host = s.proxyClientAddress
	}
	return c, nil
}

func (s *Server) logError(op, uuid string, err error) {
	level := slog.LevelInfo
	if code := status.Code(toStatus(err)); code == codes.Internal || code == codes.Unavailable {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, op+" failed", "instance", uuid, "error", err)
}
