// Package authn says who called a vncgate API: an Identity taken from a
// mutual-TLS certificate, a bearer key or a Keystone token, carried in the
// request's context so that handlers can apply rules finer than a role
// (a compute agent may only revoke its own host's instances).
//
// What it holds and promises:
//   - FromCertificate: a verified certificate's caller (subject CN) and role
//     (URI SAN urn:vncgate:role:ROLE, or the first OU); no known role, no
//     identity.
//   - KeyFile: bearer keys stored as SHA-256 only, compared in constant
//     time, the file read again when it changes, the last good keys kept
//     when it breaks; NewKey makes a key and its line.
//   - TokenValidator and FromKeystone: Keystone tokens, mapped to roles as
//     Nova's policy does.
//   - Policy and Guard: a gRPC server's interceptors authenticate every
//     call and authorise it by a table of methods and roles; a method not
//     in the table is refused (deny by default). Refusals are
//     UNAUTHENTICATED or PERMISSION_DENIED with a readable message and one
//     audit line; no credential is ever logged.
//   - GatewayMetadata: how a REST gateway passes the caller it
//     authenticated to its in-process gRPC server, under a per-process
//     secret no client header can stand for.
package authn

import "context"

// Role is what a caller may do. Every method of every API names the roles
// allowed to call it; anything else is refused.
type Role string

const (
	// RoleAPI is the cloud's API layer: it mints, introspects and revokes.
	RoleAPI Role = "api"
	// RoleMint may only mint console URLs (a Keystone user without admin).
	RoleMint Role = "mint"
	// RoleProxy is a console proxy: it only checks tokens.
	RoleProxy Role = "proxy"
	// RoleCompute is a compute agent: it revokes its own host's instances.
	RoleCompute Role = "compute"
	// RoleConsoleAuth is consoleauth calling a compute agent.
	RoleConsoleAuth Role = "consoleauth"
	// RoleOperator runs the fleet (vncgatectl): lists and kills sessions,
	// drains proxies, revokes an instance's tokens, reads status.
	RoleOperator Role = "operator"
)

// Identity is an authenticated caller.
type Identity struct {
	// Name identifies the caller in audit lines (a certificate's name, a
	// key's name, a Keystone user); never a secret.
	Name string
	Role Role
	// Host is a compute agent's host name, the only host it may act for.
	Host string
	// Via says how the caller proved who it is: "certificate", "key" or
	// "keystone".
	Via string
}

type contextKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// FromContext returns the caller's identity, if the request was
// authenticated.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(contextKey{}).(Identity)
	return id, ok
}
