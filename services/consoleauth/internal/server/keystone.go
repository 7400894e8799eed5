package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/services/consoleauth/internal/keystone"
)

// keystoneValidator adapts the Keystone client to authn.TokenValidator:
// a refused token is authn.ErrInvalidToken (401), any other failure
// authn.ErrKeystoneUnavailable (503).
type keystoneValidator struct{ v *keystone.Validator }

// ownedValidator is the Keystone client restAuth built, which Shutdown
// closes; nil for a caller's TokenValidator (Config.TokenValidator) or
// none.
func ownedValidator(v authn.TokenValidator) *keystone.Validator {
	if k, ok := v.(keystoneValidator); ok {
		return k.v
	}
	return nil
}

func (k keystoneValidator) Validate(ctx context.Context, token string) (authn.KeystoneToken, error) {
	t, err := k.v.Validate(ctx, token)
	switch {
	case errors.Is(err, keystone.ErrInvalidToken):
		return authn.KeystoneToken{}, fmt.Errorf("%w: %v", authn.ErrInvalidToken, err)
	case err != nil:
		return authn.KeystoneToken{}, fmt.Errorf("%w: %v", authn.ErrKeystoneUnavailable, err)
	}
	user := t.UserName
	if user == "" {
		user = t.UserID
	}
	project := t.ProjectName
	if project == "" {
		project = t.ProjectID
	}
	return authn.KeystoneToken{User: user, Project: project, Roles: t.Roles, ExpiresAt: t.ExpiresAt}, nil
}
