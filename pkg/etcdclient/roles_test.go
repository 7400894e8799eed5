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
		{"a proxy announces itself and its session on a lease, one txn", func() error {
			id := lease("novnc-proxy")
			_, err := users["novnc-proxy"].Txn(ctx).Then(
				clientv3.OpPut(registry.ProxyKey("novnc-proxy"), "{}", clientv3.WithLease(id)),
				clientv3.OpPut(registry.SessionKey("novnc-proxy", "s1"), "{}", clientv3.WithLease(id))).Commit()
			return err
		}, true},
		{"a proxy takes an instance slot", func() error {
			_, err := users["xvp-proxy"].Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(registry.InstanceSlotKey(instance, 0)), "=", 0)).
				Then(clientv3.OpPut(registry.InstanceSlotKey(instance, 0), "xvp-proxy/s1", clientv3.WithLease(lease("xvp-proxy")))).Commit()
			return err
		}, true},
		{"a proxy reads the slots of an instance", func() error { return get("novnc-proxy", registry.InstanceSlotsPrefix(instance)) }, true},
		{"a proxy cannot announce another", func() error { return put("novnc-proxy", registry.ProxyKey("xvp-proxy")) }, false},
		{"a proxy cannot announce one whose name it prefixes", func() error { return put("novnc-proxy", registry.ProxyKey("novnc-proxy-2")) }, false},
		{"a proxy cannot publish another's session", func() error { return put("novnc-proxy", registry.SessionKey("xvp-proxy", "s1")) }, false},
		{"a proxy reads its kills", func() error { return get("novnc-proxy", registry.ProxyKillsPrefix("novnc-proxy")) }, true},
		{"a proxy deletes a kill it acted on", func() error {
			_, err := users["novnc-proxy"].Delete(ctx, registry.SessionKillKey("novnc-proxy", "s1"))
			return err
		}, true},
		{"a proxy cannot read another's kills", func() error { return get("novnc-proxy", registry.ProxyKillsPrefix("xvp-proxy")) }, false},
		{"a proxy cannot kill another's session", func() error { return put("novnc-proxy", registry.SessionKillKey("xvp-proxy", "s1")) }, false},
		{"a proxy reads its drain", func() error {
			_, err := users["xvp-proxy"].Get(ctx, registry.ProxyDrainKey("xvp-proxy"))
			return err
		}, true},
		{"a proxy cannot drain itself", func() error { return put("xvp-proxy", registry.ProxyDrainKey("xvp-proxy")) }, false},
		{"a proxy cannot read another's drain", func() error {
			_, err := users["xvp-proxy"].Get(ctx, registry.ProxyDrainKey("novnc-proxy"))
			return err
		}, false},
		{"consoleauth lists proxies, sessions and slots", func() error {
			return errors.Join(get("consoleauth", registry.ProxiesPrefix), get("consoleauth", registry.SessionsPrefix), get("consoleauth", registry.InstanceSessionsPrefix))
		}, true},
		{"consoleauth writes kills and drains", func() error {
			return errors.Join(put("consoleauth", registry.SessionKillKey("novnc-proxy", "s1")), put("consoleauth", registry.ProxyDrainKey("xvp-proxy")))
		}, true},
		{"consoleauth cannot forge a live session", func() error { return put("consoleauth", registry.SessionKey("novnc-proxy", "s9")) }, false},
		{"consoleauth cannot take a slot", func() error { return put("consoleauth", registry.InstanceSlotKey(instance, 1)) }, false},
		{"h1 cannot read live sessions", func() error { return get("h1", registry.SessionsPrefix) }, false},
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

	// A proxy revokes its own lease, with its announcement, sessions and
	// slots on it, on shutdown.
	pid := lease("novnc-proxy")
	if _, err := users["novnc-proxy"].Txn(ctx).Then(
		clientv3.OpPut(registry.ProxyKey("novnc-proxy"), "{}", clientv3.WithLease(pid)),
		clientv3.OpPut(registry.SessionKey("novnc-proxy", "s2"), "{}", clientv3.WithLease(pid)),
		clientv3.OpPut(registry.InstanceSlotKey(instance, 5), "novnc-proxy/s2", clientv3.WithLease(pid))).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := users["novnc-proxy"].Revoke(ctx, pid); err != nil {
		t.Errorf("a proxy revoking its own lease: %v", err)
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
		{"a proxy user that cannot be a proxy name", etcdclient.Roles{ProxyUsers: []string{"novnc proxy"}}, "proxy user: proxy name"},
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
		"etcdctl user grant-role novnc-proxy proxy-novnc-proxy\n",
		"etcdctl role grant-permission proxy readwrite /vncgate/instance-sessions/ --prefix=true\n",
		"etcdctl role grant-permission proxy-novnc-proxy readwrite /vncgate/proxies/novnc-proxy --prefix=false\n",
		"etcdctl role grant-permission proxy-novnc-proxy readwrite /vncgate/sessions/novnc-proxy/ --prefix=true\n",
		"etcdctl role grant-permission proxy-novnc-proxy readwrite /vncgate/session-kills/novnc-proxy/ --prefix=true\n",
		"etcdctl role grant-permission proxy-novnc-proxy read /vncgate/proxy-drains/novnc-proxy --prefix=false\n",
		"etcdctl role grant-permission consoleauth readwrite /vncgate/session-kills/ --prefix=true\n",
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
