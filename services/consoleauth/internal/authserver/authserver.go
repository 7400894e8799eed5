// Package authserver implements consoleauth's gRPC service: it validates
// requests with Nova-like messages, mints tokens for an instance's console
// where its compute agent says the VNC server listens, checks tokens for
// the proxies (re-validating the host and port with the instance's current
// agent, or with what that agent published in etcd while it vouches for
// it: published.go), and revokes an instance's tokens. Domain errors
// become gRPC codes in one table (errors.go); the REST gateway maps those
// codes to HTTP. No answer carries etcd's own errors or key paths: while
// etcd cannot serve (the token store's health probe says so within a
// second) every call is answered UNAVAILABLE with UnavailableMessage at
// once, and an unexpected fault INTERNAL with InternalMessage, its detail
// logged.
//
// Input is bounded before it is used (input.go): instance ids must be UUIDs,
// tokens must have the one shape this service mints, console types,
// protocols and revocation reasons come from fixed sets, and no error or log
// line repeats more than a short, quoted prefix of what a caller sent.
//
// Who may call what is checked before a method runs (another layer); the one
// finer rule lives here: a compute agent (authn.RoleCompute) may only revoke
// the tokens of instances whose winning location claim is its own host's.
package authserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config is what the service needs beside its dependencies.
type Config struct {
	// NoVNCBaseURL is novncproxy_base_url, XVPBaseURL xvpvncproxy_base_url.
	NoVNCBaseURL, XVPBaseURL *url.URL
	// EnabledTypes lists the console types served (enabled_console_types).
	EnabledTypes []string
	// SingleUse makes CheckToken consume the token (single_use_tokens).
	SingleUse bool
}

// Server implements consoleauthv1.ConsoleAuthServiceServer.
type Server struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer

	cfg     Config
	enabled map[string]bool
	store   *tokenstore.Store
	agents  *agentclient.Pool
	log     *slog.Logger
	metrics *Metrics
}

// New returns the service. metrics may be nil.
func New(cfg Config, store *tokenstore.Store, agents *agentclient.Pool, log *slog.Logger, metrics *Metrics) (*Server, error) {
	if cfg.NoVNCBaseURL == nil || cfg.XVPBaseURL == nil {
		return nil, errors.New("authserver: both proxy base URLs are required")
	}
	enabled := map[string]bool{}
	for _, t := range cfg.EnabledTypes {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if t != TypeNoVNC && t != TypeXVPVNC {
			return nil, fmt.Errorf("enabled_console_types: unknown console type %q: want novnc or xvpvnc", t)
		}
		enabled[t] = true
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Server{cfg: cfg, enabled: enabled, store: store, agents: agents, log: log, metrics: metrics}, nil
}

// GetConsoleURL mints a token and returns the console URL (Nova's
// POST /servers/{id}/remote-consoles).
func (s *Server) GetConsoleURL(ctx context.Context, req *consoleauthv1.GetConsoleURLRequest) (*consoleauthv1.GetConsoleURLResponse, error) {
	rc := req.GetRemoteConsole()
	if rc == nil {
		return nil, s.answer(ctx, detail(ErrInvalidArgument, `missing "remote_console" in request body`))
	}
	if err := checkProtocol(rc.GetProtocol()); err != nil {
		return nil, s.answer(ctx, err)
	}
	uuid, err := parseUUID("server_id", req.GetServerId())
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	viewOnly := rc.GetViewOnly()
	consoleURL, err := s.consoleURL(ctx, uuid, rc.GetType(), viewOnly)
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	answer := &consoleauthv1.RemoteConsole{Protocol: rc.GetProtocol(), Type: rc.GetType(), Url: consoleURL}
	if viewOnly {
		answer.ViewOnly = &viewOnly // absent otherwise: Nova's answer
	}
	return &consoleauthv1.GetConsoleURLResponse{RemoteConsole: answer}, nil
}

// GetVNCConsole is Nova's legacy os-getVNCConsole action.
func (s *Server) GetVNCConsole(ctx context.Context, req *consoleauthv1.GetVNCConsoleRequest) (*consoleauthv1.GetVNCConsoleResponse, error) {
	action := req.GetOsGetVncConsole()
	if action == nil {
		return nil, s.answer(ctx, detail(ErrInvalidArgument, `missing "os-getVNCConsole" in request body: it is the only action served`))
	}
	uuid, err := parseUUID("server_id", req.GetServerId())
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	consoleURL, err := s.consoleURL(ctx, uuid, action.GetType(), action.GetViewOnly())
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	return &consoleauthv1.GetVNCConsoleResponse{Console: &consoleauthv1.Console{Type: action.GetType(), Url: consoleURL}}, nil
}

// consoleURL validates the console type, asks the instance's agent (uuid
// already canonical) for its VNC server, mints a token (view-only if asked)
// and builds the URL.
func (s *Server) consoleURL(ctx context.Context, uuid, consoleType string, viewOnly bool) (string, error) {
	if err := s.checkType(consoleType); err != nil {
		return "", err
	}
	minted, agent, err := s.mint(ctx, registry.Token{
		InstanceUUID: uuid,
		ConsoleType:  consoleType,
		ViewOnly:     viewOnly,
		MintedBy:     callerName(ctx),
	})
	if err != nil {
		return "", err
	}
	s.metrics.minted.WithLabelValues(consoleType).Inc()
	s.log.InfoContext(ctx, "console token minted", "instance", uuid, "console_type", consoleType,
		"host", agent.ComputeHost, "token_hash", registry.HashPrefix(minted.Hash), "view_only", viewOnly)
	if consoleType == TypeXVPVNC {
		return xvpURL(s.cfg.XVPBaseURL, minted.Token), nil
	}
	return noVNCURL(s.cfg.NoVNCBaseURL, minted.Token, viewOnly), nil
}

// CheckToken returns where a valid token connects to, after the instance's
// current agent (or its published claim) confirmed the host and port.
func (s *Server) CheckToken(ctx context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	resp, err := s.checkToken(ctx, req)
	err = s.answer(ctx, err)
	s.metrics.checked.WithLabelValues(status.Code(err).String()).Inc()
	return resp, err
}

func (s *Server) checkToken(ctx context.Context, req *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	if err := checkTokenShape("token", req.GetToken()); err != nil {
		return nil, err
	}
	if t := req.GetConsoleType(); t != "" && t != TypeNoVNC && t != TypeXVPVNC {
		return nil, detail(ErrInvalidArgument, fmt.Sprintf("unsupported console type %s: want novnc or xvpvnc", quoteShort(t)))
	}
	entry, err := s.lookup(ctx, req.GetToken())
	if err != nil {
		return nil, err
	}
	rec := entry.Record
	if t := req.GetConsoleType(); t != "" && t != rec.ConsoleType {
		return nil, detail(ErrWrongType, fmt.Sprintf("token is for a %s console, not %s", rec.ConsoleType, t))
	}
	if s.cfg.SingleUse {
		if err := s.store.Consume(ctx, entry); err != nil {
			return nil, err
		}
	}
	if err := s.revalidate(ctx, rec); err != nil {
		return nil, err
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: &consoleauthv1.ConnectInfo{
		InstanceUuid:       rec.InstanceUUID,
		ConsoleType:        rec.ConsoleType,
		Host:               rec.Host,
		Port:               rec.Port,
		InternalAccessPath: rec.InternalAccessPath,
		CreatedAt:          timestamppb.New(rec.CreatedAt),
		ExpiresAt:          timestamppb.New(rec.ExpiresAt),
		TokenHashPrefix:    registry.HashPrefix(entry.Hash),
		ComputeHost:        rec.ComputeHost,
		ViewOnly:           rec.ViewOnly,
		TokenRevision:      entry.Revision,
		MintedBy:           rec.MintedBy,
	}}, nil
}

// lookup is the store's Lookup, counted by where the record was found.
func (s *Server) lookup(ctx context.Context, token string) (tokenstore.Entry, error) {
	e, err := s.store.Lookup(ctx, token)
	if err == nil {
		src := sourceEtcd
		if e.FromMemory {
			src = sourceMemory
		}
		s.metrics.lookups.WithLabelValues(src).Inc()
	}
	return e, err
}

// revalidate asks the instance's current agent whether the token's host and
// port are still its VNC server (the instance may have moved or restarted
// on another port since the token was minted).
func (s *Server) revalidate(ctx context.Context, rec registry.Token) error {
	agent, err := s.store.Locate(ctx, rec.InstanceUUID)
	switch {
	case errors.Is(err, tokenstore.ErrUnknownInstance):
		return detail(ErrConsoleMoved, fmt.Sprintf("console moved: instance %s is no longer known", rec.InstanceUUID))
	case errors.Is(err, tokenstore.ErrComputeDown):
		return detail(ErrAgentGone, err.Error())
	case err != nil:
		return err
	}
	if s.vouched(agent) {
		return checkPublished(agent, rec)
	}
	valid, reason, err := s.agents.ValidateConsolePort(ctx, agentOf(agent),
		rec.InstanceUUID, rec.ConsoleType, rec.Host, rec.Port)
	switch {
	case errors.Is(err, agentclient.ErrUnreachable):
		return detail(ErrAgentGone, err.Error())
	case errors.Is(err, agentclient.ErrNotFound):
		return detail(ErrConsoleMoved, "console moved: "+err.Error())
	case err != nil:
		return err
	case !valid:
		if reason == "" {
			reason = fmt.Sprintf("%s:%d is no longer the console of instance %s", rec.Host, rec.Port, rec.InstanceUUID)
		}
		return detail(ErrConsoleMoved, "console moved: "+reason)
	}
	return nil
}

// GetConsoleAuthToken is token introspection (Nova's
// GET /os-console-auth-tokens/{token}). Like CheckToken it asks the
// instance's current agent whether the host and port are still its
// console, so it never vouches for a stale address.
func (s *Server) GetConsoleAuthToken(ctx context.Context, req *consoleauthv1.GetConsoleAuthTokenRequest) (*consoleauthv1.GetConsoleAuthTokenResponse, error) {
	if err := checkTokenShape("console_token", req.GetConsoleToken()); err != nil {
		return nil, s.answer(ctx, err)
	}
	entry, err := s.lookup(ctx, req.GetConsoleToken())
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	rec := entry.Record
	if err := s.revalidate(ctx, rec); err != nil {
		return nil, s.answer(ctx, err)
	}
	answer := &consoleauthv1.ConsoleAuthToken{
		InstanceUuid:       rec.InstanceUUID,
		Host:               rec.Host,
		Port:               rec.Port,
		InternalAccessPath: rec.InternalAccessPath,
	}
	if rec.ViewOnly {
		answer.ViewOnly = &rec.ViewOnly // absent otherwise: Nova's answer
	}
	return &consoleauthv1.GetConsoleAuthTokenResponse{Console: answer}, nil
}

// RevokeInstanceTokens deletes an instance's tokens and announces it with
// the sentence of the reason code given. A compute agent may only revoke
// its own host's instances.
func (s *Server) RevokeInstanceTokens(ctx context.Context, req *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	uuid, err := parseUUID("instance_uuid", req.GetInstanceUuid())
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	reason := req.GetReason()
	if reason == "" {
		reason = registry.DefaultRevocationReason
	}
	if _, ok := registry.RevocationSentence(reason); !ok {
		return nil, s.answer(ctx, detail(ErrInvalidArgument, fmt.Sprintf("unknown reason %s: want one of %s",
			quoteShort(reason), strings.Join(registry.RevocationCodes(), ", "))))
	}
	if err := s.mayRevoke(ctx, uuid); err != nil {
		return nil, s.answer(ctx, err)
	}
	n, err := s.store.Revoke(ctx, uuid, reason)
	s.metrics.revoked.Add(float64(n))
	if err != nil {
		return nil, s.answer(ctx, err)
	}
	s.log.InfoContext(ctx, "instance console tokens revoked", "instance", uuid, "revoked", n, "reason", reason)
	return &consoleauthv1.RevokeInstanceTokensResponse{RevokedCount: int32(n)}, nil
}

// mayRevoke applies the one rule finer than a role: a compute agent revokes
// only instances whose winning location claim is its own host's (a host
// cannot end the consoles of another host's instances, even by claiming
// them too: the older claim wins).
func (s *Server) mayRevoke(ctx context.Context, uuid string) error {
	id, ok := authn.FromContext(ctx)
	if !ok || id.Role != authn.RoleCompute {
		return nil
	}
	owner, err := s.store.Owner(ctx, uuid)
	if err != nil && !errors.Is(err, tokenstore.ErrUnknownInstance) {
		return err
	}
	if err == nil && id.Host != "" && owner == id.Host {
		return nil
	}
	s.log.WarnContext(ctx, "revocation refused: not the instance's compute host",
		"caller", id.Name, "host", id.Host, "instance", uuid, "owner", owner)
	return detail(ErrNotOwner, fmt.Sprintf("compute host %s may only revoke its own instances", quoteShort(id.Host)))
}

// agentOf is the agent client's view of an instance's agent.
func agentOf(a tokenstore.Agent) agentclient.Agent {
	return agentclient.Agent{Host: a.ComputeHost, Address: a.Address, Registration: a.Registration}
}

func checkProtocol(protocol string) error {
	switch protocol {
	case "vnc":
		return nil
	case "":
		return detail(ErrInvalidArgument, `missing remote_console.protocol: only "vnc" is served`)
	default:
		return detail(ErrInvalidArgument, fmt.Sprintf("unsupported protocol %s: only vnc is served", quoteShort(protocol)))
	}
}

func (s *Server) checkType(consoleType string) error {
	switch {
	case consoleType == "":
		return detail(ErrInvalidArgument, "missing console type: want novnc or xvpvnc")
	case consoleType != TypeNoVNC && consoleType != TypeXVPVNC:
		return detail(ErrInvalidArgument, fmt.Sprintf("unsupported console type %s: want novnc or xvpvnc", quoteShort(consoleType)))
	case !s.enabled[consoleType]:
		return detail(ErrTypeDisabled, fmt.Sprintf("console type %q is not enabled (enabled_console_types)", consoleType))
	}
	return nil
}

// callerName is the authenticated caller's name, recorded as the token's
// minted_by ("" when the call was not authenticated, as in unit tests).
func callerName(ctx context.Context) string {
	id, _ := authn.FromContext(ctx)
	return id.Name
}
