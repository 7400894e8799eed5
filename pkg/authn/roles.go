package authn

import (
	"fmt"
	"strings"
)

// Roles are every role, in the order messages list them.
var Roles = []Role{RoleAPI, RoleMint, RoleProxy, RoleCompute, RoleConsoleAuth, RoleOperator}

// ParseRole reads a role's name (api, mint, proxy, compute, consoleauth, operator).
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %.40q: want one of %s", s, roleList())
}

func roleList() string {
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}
