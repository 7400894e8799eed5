package authn

import (
	"errors"
	"testing"
)

// TestFromKeystone maps Keystone roles as Nova's policy does: admin may do
// everything, project members and services may mint.
func TestFromKeystone(t *testing.T) {
	tests := []struct {
		name     string
		roles    []string
		want     Role
		wantDeny bool
	}{
		{"admin", []string{"reader", "admin"}, RoleAPI, false},
		{"admin in capitals", []string{"Admin"}, RoleAPI, false},
		{"member", []string{"member", "reader"}, RoleMint, false},
		{"service", []string{"service"}, RoleMint, false},
		{"reader only", []string{"reader"}, "", true},
		{"no role", nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := FromKeystone(KeystoneToken{User: "alice", Project: "demo", Roles: tt.roles}, DefaultKeystoneMintRoles)
			if tt.wantDeny {
				if !errors.Is(err, ErrPermissionDenied) {
					t.Fatalf("got %+v, %v; want ErrPermissionDenied", id, err)
				}
				return
			}
			if err != nil || id != (Identity{Name: "alice@demo", Role: tt.want, Via: "keystone"}) {
				t.Errorf("got %+v, %v; want role %s", id, err, tt.want)
			}
		})
	}
	if _, err := FromKeystone(KeystoneToken{User: "bob", Roles: []string{"member"}}, []string{"console"}); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("member without it in keystone_mint_roles: got %v, want ErrPermissionDenied", err)
	}
}
