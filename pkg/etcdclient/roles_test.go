package etcdclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
)

const instance = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"

// TestRolesOnARealEtcd applies the plan to an etcd that authenticates
// clients by certificate and checks what each service's user may and may
// not do.
func TestRolesOnARealEtcd(t *testing.T) {
	srv := etcd.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	root := srv.ClientAs(t, "root")
	plan := etcdclient.Roles{ComputeHosts: []string{"h1", "h2"}}
	if err := plan.Apply(ctx, root); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if st, err := root.AuthStatus(ctx); err != nil || !st.Enabled {
		t.Fatalf("auth status: %v, %v, want enabled", st, err)
	}

	users := map[string]*clientv3.Client{}
	for _, u := range []string{"consoleauth", "novnc-proxy", "xvp-proxy", "h1", "h2", "stranger"} {
		users[u] = srv.ClientAs(t, u)
	}
	lease := func(user string) clientv3.LeaseID {
		t.Helper()
		l, err := users[user].Grant(ctx, 60)
		if err != nil {
			t.Fatalf("%s: grant: %v", user, err)
		}
		return l.ID
	}
	put := func(user, key string) error {
		_, err := users[user].Put(ctx, key, "{}")
		return err
	}
	get := func(user, key string) error {
		_, err := users[user].Get(ctx, key, clientv3.WithPrefix())
		return err
	}
	tokenKey := registry.TokenKey(strings.Repeat("0", 64))
	tests := []struct {
		name    string
		do      func() error
		allowed bool
	}{
		{"consoleauth mints (token and index on a lease, one txn)", func() error {
			id := lease("consoleauth")
			_, err := users["consoleauth"].Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(tokenKey), "=", 0)).
				Then(clientv3.OpPut(tokenKey, "{}", clientv3.WithLease(id)),
					clientv3.OpPut(registry.InstanceTokenKey(instance, strings.Repeat("0", 64)), "", clientv3.WithLease(id))).
				Commit()
			return err
		}, true},
		{"consoleauth revokes", func() error { return put("consoleauth", registry.RevocationKey(instance)) }, true},
		{"consoleauth reads the agents", func() error { return get("consoleauth", registry.ComputesPrefix) }, true},
		{"consoleauth reads the claims", func() error { return get("consoleauth", registry.ComputeInstancesRoot) }, true},
		{"consoleauth cannot register an agent", func() error { return put("consoleauth", registry.ComputeKey("h1")) }, false},
		{"consoleauth cannot claim an instance", func() error { return put("consoleauth", registry.ComputeInstanceKey("h1", instance)) }, false},
		{"a proxy reads revocations", func() error { return get("novnc-proxy", registry.RevocationsPrefix) }, true},
		{"a proxy cannot plant a token", func() error { return put("xvp-proxy", tokenKey) }, false},
		{"a proxy cannot read tokens", func() error { return get("novnc-proxy", registry.TokensPrefix) }, false},
		{"a proxy cannot revoke", func() error { return put("novnc-proxy", registry.RevocationKey(instance)) }, false},
		{"h1 registers on a lease", func() error {
			_, err := users["h1"].Put(ctx, registry.ComputeKey("h1"), "{}", clientv3.WithLease(lease("h1")))
			return err
		}, true},
		{"h1 claims its instance", func() error { return put("h1", registry.ComputeInstanceKey("h1", instance)) }, true},
		{"h1 lists its claims", func() error { return get("h1", registry.ComputeInstancesPrefix("h1")) }, true},
		{"h1 cannot claim for h2", func() error { return put("h1", registry.ComputeInstanceKey("h2", instance)) }, false},
		{"h1 cannot register as h2", func() error { return put("h1", registry.ComputeKey("h2")) }, false},
		{"h1 cannot register as h10", func() error { return put("h1", registry.ComputeKey("h10")) }, false},
		{"h1 cannot claim as h10", func() error { return put("h1", registry.ComputeInstanceKey("h10", instance)) }, false},
		{"h1 cannot plant a token", func() error { return put("h1", tokenKey) }, false},
		{"h1 cannot revoke", func() error { return put("h1", registry.RevocationKey(instance)) }, false},
		{"a user outside the plan reads nothing", func() error { return get("stranger", registry.RevocationsPrefix) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			switch {
			case tt.allowed && err != nil:
				t.Errorf("got %v, want allowed", err)
			case !tt.allowed && !errors.Is(err, rpctypes.ErrPermissionDenied):
				t.Errorf("got %v, want permission denied", err)
			}
		})
	}

	// h1 revokes its own lease (the keys on it are its own) on shutdown.
	id := lease("h1")
	if _, err := users["h1"].Put(ctx, registry.ComputeKey("h1"), "{}", clientv3.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	if _, err := users["h1"].Revoke(ctx, id); err != nil {
		t.Errorf("h1 revoking its own lease: %v", err)
	}

	// A proxy's watch of revocations sees consoleauth's writes.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	events := users["xvp-proxy"].Watch(wctx, registry.RevocationsPrefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if created := <-events; created.Err() != nil {
		t.Fatalf("proxy watch: %v", created.Err())
	}
	if err := put("consoleauth", registry.RevocationKey(instance)); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; ev.Err() != nil || len(ev.Events) != 1 {
		t.Fatalf("proxy watch: got %+v, want the revocation", ev)
	}
	// Outside its grant the watch is refused.
	bad := users["novnc-proxy"].Watch(wctx, registry.TokensPrefix, clientv3.WithPrefix())
	if resp := <-bad; !resp.Canceled || resp.Err() == nil || !strings.Contains(resp.Err().Error(), "permission denied") {
		t.Errorf("proxy watching tokens: got %+v (%v), want canceled, permission denied", resp, resp.Err())
	}

	// Applying again adds a host, keeps the rest; only root may.
	more := etcdclient.Roles{ComputeHosts: []string{"h1", "h2", "h3"}}
	if err := more.Apply(ctx, users["consoleauth"]); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("apply as consoleauth: got %v, want permission denied", err)
	}
	if err := more.Apply(ctx, root); err != nil {
		t.Fatalf("apply again: %v", err)
	}
	if _, err := srv.ClientAs(t, "h3").Put(ctx, registry.ComputeInstanceKey("h3", instance), "{}"); err != nil {
		t.Errorf("h3 after the second apply: %v", err)
	}
	if err := put("h1", registry.ComputeInstanceKey("h1", instance)); err != nil {
		t.Errorf("h1 after the second apply: %v", err)
	}
}

func TestRolesCheck(t *testing.T) {
	tests := []struct {
		name  string
		roles etcdclient.Roles
		err   string
	}{
		{"defaults", etcdclient.Roles{ComputeHosts: []string{"h1"}}, ""},
		{"a host named like consoleauth", etcdclient.Roles{ComputeHosts: []string{"consoleauth"}}, `compute host "consoleauth": already the user of consoleauth user`},
		{"a host named root", etcdclient.Roles{ComputeHosts: []string{"root"}}, "already the user of the administrator"},
		{"a host twice", etcdclient.Roles{ComputeHosts: []string{"h1", "h1"}}, "already the user of compute host"},
		{"a host with a slash", etcdclient.Roles{ComputeHosts: []string{"h1/x"}}, "without '/'"},
		{"an empty host", etcdclient.Roles{ComputeHosts: []string{""}}, "non-empty"},
		{"a proxy named like a host", etcdclient.Roles{ProxyUsers: []string{"h1"}, ComputeHosts: []string{"h1"}}, "already the user of proxy user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.roles.WithDefaults().Check()
			if tt.err == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

func TestRolesScript(t *testing.T) {
	script, err := etcdclient.Roles{ComputeHosts: []string{"h1", "rack 2"}}.Script()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"etcdctl role grant-permission consoleauth readwrite /vncgate/tokens/ --prefix=true\n",
		"etcdctl role grant-permission proxy read /vncgate/revocations/ --prefix=true\n",
		"etcdctl role grant-permission compute-h1 readwrite /vncgate/computes/h1 --prefix=false\n",
		"etcdctl role grant-permission compute-h1 readwrite /vncgate/compute-instances/h1/ --prefix=true\n",
		"etcdctl user add 'rack 2' --no-password\n",
		"etcdctl user grant-role novnc-proxy proxy\n",
		"etcdctl user add root --no-password\netcdctl user grant-role root root\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if !strings.HasSuffix(script, "etcdctl auth enable\n") {
		t.Errorf("script does not end by enabling auth:\n%s", script)
	}
}
