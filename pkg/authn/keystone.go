package authn

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"
)

// TokenValidator validates a Keystone token ([vncgate] rest_auth =
// keystone: the X-Auth-Token of a REST call), as keystonemiddleware does
// for Nova. Implementations cache a valid token for its life.
type TokenValidator interface {
	// Validate returns what Keystone says of token. The error wraps
	// ErrInvalidToken when Keystone refuses the token (REST 401) and
	// ErrKeystoneUnavailable when Keystone could not be asked (REST 503).
	Validate(ctx context.Context, token string) (KeystoneToken, error)
}

// KeystoneToken is what a valid token says of its holder.
type KeystoneToken struct {
	// User is the user's name (or ID); Project the token's project.
	User    string
	Project string
	// Roles are the user's role names in the project.
	Roles     []string
	ExpiresAt time.Time
}

var (
	// ErrInvalidToken: Keystone refused the token (unknown, expired,
	// revoked) or it is malformed.
	ErrInvalidToken = errors.New("invalid keystone token")
	// ErrKeystoneUnavailable: Keystone did not answer, or not sensibly.
	ErrKeystoneUnavailable = errors.New("keystone unavailable")
)

// KeystoneAdminRole is the Keystone role that gets RoleAPI (mint,
// introspect, revoke), as Nova's policy gives admin the console-token calls.
const KeystoneAdminRole = "admin"

// DefaultKeystoneMintRoles are [vncgate] keystone_mint_roles by default:
// Nova lets project members (and services) open their servers' consoles.
var DefaultKeystoneMintRoles = []string{"admin", "member", "service"}

// FromKeystone is the identity of a token's holder: RoleAPI for Keystone's
// admin role, RoleMint for one of mintRoles (compared without case).
// Other roles grant nothing: the error wraps ErrPermissionDenied.
func FromKeystone(tok KeystoneToken, mintRoles []string) (Identity, error) {
	has := func(role string) bool {
		return slices.ContainsFunc(tok.Roles, func(r string) bool { return strings.EqualFold(r, role) })
	}
	id := Identity{Name: tok.User, Via: "keystone"}
	if tok.Project != "" {
		id.Name = tok.User + "@" + tok.Project
	}
	switch {
	case has(KeystoneAdminRole):
		id.Role = RoleAPI
	case slices.ContainsFunc(mintRoles, has):
		id.Role = RoleMint
	default:
		return id, refuse(ErrPermissionDenied, "keystone user %.64s has roles [%.100s]: none of them may use consoles (want %s, or one of keystone_mint_roles: %s)",
			id.Name, strings.Join(tok.Roles, ","), KeystoneAdminRole, strings.Join(mintRoles, ","))
	}
	return id, nil
}
