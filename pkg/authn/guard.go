package authn

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// HealthMethods are grpc.health.v1's methods, which load balancers call
// without credentials: list them in GuardOptions.Open.
var HealthMethods = []string{
	"/grpc.health.v1.Health/Check",
	"/grpc.health.v1.Health/Watch",
	"/grpc.health.v1.Health/List",
}

// GuardOptions configure a Guard.
type GuardOptions struct {
	// Policy says which roles may call each method; others are refused.
	Policy Policy
	// Open are methods anyone may call, authenticated or not.
	Open []string
	// RoleSource is where certificates name their role.
	RoleSource RoleSource
	// GatewaySecret, when set, makes the guard that of the in-process
	// server behind the REST gateway: callers are those the gateway
	// authenticated, passed with GatewayMetadata under this secret, and
	// certificates are not looked at.
	GatewaySecret string
	// NoCertificate is the message for a call without a verified client
	// certificate, saying what to configure.
	NoCertificate string
	// Log receives one audit line (WARN) per refusal.
	Log *slog.Logger
}

// Guard authenticates and authorises every call of a gRPC server: it
// takes the caller's Identity from its verified client certificate (or
// from the REST gateway), checks the Policy, puts the identity in the
// handler's context (FromContext) and refuses anything else with
// UNAUTHENTICATED or PERMISSION_DENIED and an audit line (keys caller,
// role, method, client, reason, message; never a credential).
type Guard struct {
	opts GuardOptions
	open map[string]bool
	log  *slog.Logger
}

// NewGuard returns a guard applying o.
func NewGuard(o GuardOptions) *Guard {
	g := &Guard{opts: o, open: map[string]bool{}, log: o.Log}
	for _, m := range o.Open {
		g.open[m] = true
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.opts.NoCertificate == "" {
		g.opts.NoCertificate = "gRPC callers must present a client certificate"
	}
	return g
}

// UnaryInterceptor guards unary calls.
func (g *Guard) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := g.Admit(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor guards streaming calls.
func (g *Guard) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := g.Admit(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// Admit authenticates and authorises a call of method: it returns ctx
// with the caller's identity, or a gRPC status error.
func (g *Guard) Admit(ctx context.Context, method string) (context.Context, error) {
	if g.open[method] {
		return ctx, nil
	}
	id, client, err := g.authenticate(ctx)
	if err == nil {
		err = g.opts.Policy.Authorize(method, id)
	}
	if err != nil {
		if client == "" {
			if p, ok := peer.FromContext(ctx); ok {
				client = hostOf(p.Addr)
			}
		}
		code, reason := codes.PermissionDenied, "permission_denied"
		if errors.Is(err, ErrUnauthenticated) {
			code, reason = codes.Unauthenticated, "unauthenticated"
		}
		g.log.LogAttrs(ctx, slog.LevelWarn, "request refused",
			slog.String("caller", id.Name), slog.String("role", string(id.Role)), slog.String("via", id.Via),
			slog.String("method", method), slog.String("client", client),
			slog.String("reason", reason), slog.String("message", err.Error()))
		return ctx, status.Error(code, err.Error())
	}
	return NewContext(ctx, id), nil
}

func (g *Guard) authenticate(ctx context.Context) (Identity, string, error) {
	if g.opts.GatewaySecret != "" {
		return fromGateway(ctx, g.opts.GatewaySecret)
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, "", refuse(ErrUnauthenticated, "%s", g.opts.NoCertificate)
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	// Only a chain the TLS stack verified speaks for anyone.
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}, "", refuse(ErrUnauthenticated, "%s", g.opts.NoCertificate)
	}
	id, err := FromCertificate(ti.State.VerifiedChains[0][0], g.opts.RoleSource)
	return id, "", err
}

func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return h
	}
	return a.String()
}

// The REST gateway passes the caller it authenticated to the in-process
// gRPC server in one binary metadata entry, beside a secret only this
// process knows: a header a REST client sends cannot stand for it (the
// gateway forwards no client header as metadata, and the secret is never
// sent anywhere).
const (
	gatewaySecretKey   = "x-vncgate-gateway-secret"
	gatewayIdentityKey = "x-vncgate-identity-bin"
)

type gatewayCaller struct {
	Name   string `json:"name"`
	Role   Role   `json:"role"`
	Host   string `json:"host,omitempty"`
	Via    string `json:"via"`
	Client string `json:"client,omitempty"`
}

// NewGatewaySecret returns a random secret for GatewayMetadata, made once
// per process.
func NewGatewaySecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// GatewayMetadata is the metadata with which the REST gateway tells its
// in-process gRPC server who called: id, from the client address client.
func GatewayMetadata(secret string, id Identity, client string) metadata.MD {
	b, _ := json.Marshal(gatewayCaller{Name: id.Name, Role: id.Role, Host: id.Host, Via: id.Via, Client: client})
	return metadata.Pairs(gatewaySecretKey, secret, gatewayIdentityKey, string(b))
}

func fromGateway(ctx context.Context, secret string) (Identity, string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	secrets, ids := md.Get(gatewaySecretKey), md.Get(gatewayIdentityKey)
	if len(secrets) != 1 || len(ids) != 1 || subtle.ConstantTimeCompare([]byte(secrets[0]), []byte(secret)) != 1 {
		return Identity{}, "", refuse(ErrUnauthenticated, "no authenticated caller: send credentials")
	}
	var c gatewayCaller
	if err := json.Unmarshal([]byte(ids[0]), &c); err != nil || !slices.Contains(Roles, c.Role) {
		return Identity{}, "", refuse(ErrUnauthenticated, "no authenticated caller: send credentials")
	}
	return Identity{Name: c.Name, Role: c.Role, Host: c.Host, Via: c.Via}, c.Client, nil
}
