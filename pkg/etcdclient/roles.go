package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Roles is vncgate's least-privilege plan for etcd authentication: one role
// per service, each user granted only what its service reads and writes
// (package registry's "who writes what").
//
//	role          permission  keys
//	consoleauth   readwrite   /vncgate/tokens/, /vncgate/instances/, /vncgate/revocations/,
//	                          /vncgate/session-kills/, /vncgate/proxy-drains/ (vncgatectl's kills and drains)
//	              read        /vncgate/computes/, /vncgate/compute-instances/,
//	                          /vncgate/proxies/, /vncgate/sessions/, /vncgate/instance-sessions/
//	proxy         read        /vncgate/revocations/
//	              readwrite   /vncgate/instance-sessions/ (every instance: the slots capping an
//	                          instance's sessions are shared by all proxies)
//	proxy-P       readwrite   the key /vncgate/proxies/P, /vncgate/sessions/P/,
//	                          /vncgate/session-kills/P/ (read, then delete once acted on)
//	              read        the key /vncgate/proxy-drains/P
//	compute-H     readwrite   the key /vncgate/computes/H, /vncgate/compute-instances/H/
//	root          (all)       the administrator, for etcd itself
//
// A proxy user P has the roles proxy and proxy-P: P is both the CN of the
// proxy's etcd certificate and its proxy_name (package livesessions), so
// a proxy can write only its own records and act only on its own kills
// and drain. Two proxies therefore need two certificates (and names).
//
// Users carry no password: each service proves its user with its etcd
// client certificate, whose common name is the user name (etcd
// --client-cert-auth). So consoleauth's certificate says CN=consoleauth,
// the proxies' CN=novnc-proxy and CN=xvp-proxy (or whatever ProxyUsers
// names), a compute agent's CN=its host name, and the administrator's
// CN=root. The same certificates already speak for the services in
// vncgate's own mTLS.
type Roles struct {
	// ConsoleAuthUser is consoleauth's user: "consoleauth".
	ConsoleAuthUser string
	// ProxyUsers are the users of the proxy role: "novnc-proxy",
	// "xvp-proxy".
	ProxyUsers []string
	// ComputeHosts are the compute hosts; each gets the user H and the
	// role compute-H.
	ComputeHosts []string
}

// Role names, beside compute-H and proxy-P.
const (
	RoleRoot        = "root"
	RoleConsoleAuth = "consoleauth"
	RoleProxy       = "proxy"
	computeRole     = "compute-"
	proxyRole       = "proxy-"
)

// Grant is one permission of a role: Key alone, or every key starting with
// Key when Prefix is set.
type Grant struct {
	Role   string
	Write  bool // readwrite; read otherwise
	Key    string
	Prefix bool
}

// WithDefaults fills the empty fields with the default user names.
func (r Roles) WithDefaults() Roles {
	if r.ConsoleAuthUser == "" {
		r.ConsoleAuthUser = "consoleauth"
	}
	if len(r.ProxyUsers) == 0 {
		r.ProxyUsers = []string{"novnc-proxy", "xvp-proxy"}
	}
	return r
}

// Check refuses a plan whose names could collide: a user named twice (a
// compute host called "consoleauth" would get consoleauth's rights too), or
// a host name that is empty or holds a '/' (its prefix would cover another
// host's keys).
func (r Roles) Check() error {
	seen := map[string]string{RoleRoot: "the administrator"}
	add := func(name, what string) error {
		if name == "" || strings.ContainsAny(name, "/\x00") || strings.TrimSpace(name) != name {
			return fmt.Errorf("%s %q: want a non-empty name without '/' or surrounding spaces", what, name)
		}
		if other, ok := seen[name]; ok {
			return fmt.Errorf("%s %q: already the user of %s", what, name, other)
		}
		seen[name] = what
		return nil
	}
	if err := add(r.ConsoleAuthUser, "consoleauth user"); err != nil {
		return err
	}
	for _, u := range r.ProxyUsers {
		if err := add(u, "proxy user"); err != nil {
			return err
		}
		// The user is the proxy's name, a segment of its keys.
		if err := registry.CheckProxyName(u); err != nil {
			return fmt.Errorf("proxy user: %w", err)
		}
	}
	for _, h := range r.ComputeHosts {
		if err := add(h, "compute host"); err != nil {
			return err
		}
	}
	return nil
}

// Grants lists every permission of the plan, role by role.
func (r Roles) Grants() []Grant {
	g := []Grant{
		{RoleConsoleAuth, true, registry.TokensPrefix, true},
		{RoleConsoleAuth, true, registry.InstancesPrefix, true},
		{RoleConsoleAuth, true, registry.RevocationsPrefix, true},
		{RoleConsoleAuth, true, registry.SessionKillsPrefix, true},
		{RoleConsoleAuth, true, registry.ProxyDrainsPrefix, true},
		{RoleConsoleAuth, false, registry.ComputesPrefix, true},
		{RoleConsoleAuth, false, registry.ComputeInstancesRoot, true},
		{RoleConsoleAuth, false, registry.ProxiesPrefix, true},
		{RoleConsoleAuth, false, registry.SessionsPrefix, true},
		{RoleConsoleAuth, false, registry.InstanceSessionsPrefix, true},
		{RoleProxy, false, registry.RevocationsPrefix, true},
		{RoleProxy, true, registry.InstanceSessionsPrefix, true},
	}
	for _, u := range r.ProxyUsers {
		g = append(g,
			// Keys, not prefixes, where a prefix would cover p10 for p1.
			Grant{proxyRole + u, true, registry.ProxyKey(u), false},
			Grant{proxyRole + u, true, registry.ProxySessionsPrefix(u), true},
			Grant{proxyRole + u, true, registry.ProxyKillsPrefix(u), true},
			Grant{proxyRole + u, false, registry.ProxyDrainKey(u), false})
	}
	for _, h := range r.ComputeHosts {
		g = append(g,
			// One key, not a prefix: /vncgate/computes/h1 as a prefix
			// would also cover h10.
			Grant{computeRole + h, true, registry.ComputeKey(h), false},
			Grant{computeRole + h, true, registry.ComputeInstancesPrefix(h), true})
	}
	return g
}

// userRoles lists every user with its role.
func (r Roles) userRoles() [][2]string {
	ur := [][2]string{{RoleRoot, RoleRoot}, {r.ConsoleAuthUser, RoleConsoleAuth}}
	for _, u := range r.ProxyUsers {
		ur = append(ur, [2]string{u, RoleProxy}, [2]string{u, proxyRole + u})
	}
	for _, h := range r.ComputeHosts {
		ur = append(ur, [2]string{h, computeRole + h})
	}
	return ur
}

func (r Roles) roles() []string {
	roles := []string{RoleRoot, RoleConsoleAuth, RoleProxy}
	for _, u := range r.ProxyUsers {
		roles = append(roles, proxyRole+u)
	}
	for _, h := range r.ComputeHosts {
		roles = append(roles, computeRole+h)
	}
	return roles
}

// Apply creates the roles, users and grants on cli's etcd and enables
// authentication. It may be run again (after auth is on, as root) to add
// compute hosts: what exists is kept, what is missing is added. Roles
// outside the plan are left alone.
func (r Roles) Apply(ctx context.Context, cli *clientv3.Client) error {
	r = r.WithDefaults()
	if err := r.Check(); err != nil {
		return err
	}
	for _, role := range r.roles() {
		if _, err := cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("role add %s: %w", role, err)
		}
	}
	for _, g := range r.Grants() {
		perm := clientv3.PermissionType(authpb.READ)
		if g.Write {
			perm = clientv3.PermissionType(authpb.READWRITE)
		}
		end := ""
		if g.Prefix {
			end = clientv3.GetPrefixRangeEnd(g.Key)
		}
		if _, err := cli.RoleGrantPermission(ctx, g.Role, g.Key, end, perm); err != nil {
			return fmt.Errorf("role grant-permission %s %s: %w", g.Role, g.Key, err)
		}
	}
	for _, ur := range r.userRoles() {
		user, role := ur[0], ur[1]
		_, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
		if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("user add %s: %w", user, err)
		}
		if _, err := cli.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("user grant-role %s %s: %w", user, role, err)
		}
	}
	status, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if !status.Enabled {
		if _, err := cli.AuthEnable(ctx); err != nil {
			return fmt.Errorf("auth enable: %w", err)
		}
	}
	return nil
}

// Script returns the plan as etcdctl commands (sh), for operators who
// apply it by hand. Commands for what already exists fail harmlessly
// ("already exists"); the script goes on.
func (r Roles) Script() (string, error) {
	r = r.WithDefaults()
	if err := r.Check(); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# vncgate's etcd roles (deploy/cmd/etcd-roles). Set ETCDCTL_ENDPOINTS, ETCDCTL_CACERT,\n")
	b.WriteString("# ETCDCTL_CERT and ETCDCTL_KEY (a client certificate with CN=root once auth is on).\n")
	for _, role := range r.roles() {
		fmt.Fprintf(&b, "etcdctl role add %s\n", shellQuote(role))
	}
	for _, g := range r.Grants() {
		perm := "read"
		if g.Write {
			perm = "readwrite"
		}
		fmt.Fprintf(&b, "etcdctl role grant-permission %s %s %s --prefix=%v\n", shellQuote(g.Role), perm, shellQuote(g.Key), g.Prefix)
	}
	added := map[string]bool{}
	for _, ur := range r.userRoles() {
		if !added[ur[0]] {
			added[ur[0]] = true
			fmt.Fprintf(&b, "etcdctl user add %s --no-password\n", shellQuote(ur[0]))
		}
		fmt.Fprintf(&b, "etcdctl user grant-role %s %s\n", shellQuote(ur[0]), shellQuote(ur[1]))
	}
	b.WriteString("etcdctl auth enable\n")
	return b.String(), nil
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(c rune) bool {
		return !slices.Contains([]rune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:"), c)
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
