package operations_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/authserver"
	"github.com/vncgate/vncgate/services/consoleauth/internal/operations"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/testkit/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	vm1 = "11111111-2222-4333-8444-555555555555"
	vm2 = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
)

// proxy is an in-test proxy doing what the contract (registry/sessions.go)
// asks of one: it announces itself and its sessions under one lease and,
// when it acts, ends a session whose kill key appears.
type proxy struct {
	name  string
	cli   *clientv3.Client
	lease clientv3.LeaseID
}

func startProxy(t *testing.T, cli *clientv3.Client, name, consoleType string) *proxy {
	t.Helper()
	lease, err := cli.Grant(testworld.Ctx(t), 60)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{name: name, cli: cli, lease: lease.ID}
	p.put(t, registry.ProxyKey(name), registry.Proxy{Name: name, ConsoleType: consoleType, Address: "127.0.0.1:6080",
		Started: time.Now().UTC()})
	return p
}

func (p *proxy) put(t *testing.T, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if _, err := p.cli.Put(testworld.Ctx(t), key, string(b), clientv3.WithLease(p.lease)); err != nil {
		t.Fatal(err)
	}
}

func (p *proxy) open(t *testing.T, id, instance, host string) {
	t.Helper()
	p.put(t, registry.SessionKey(p.name, id), registry.LiveSession{ID: id, InstanceUUID: instance, Proxy: p.name,
		ConsoleType: "novnc", Client: "192.0.2.7", ComputeHost: host, Started: time.Now().UTC(), BytesToClient: 10,
		Updated: time.Now().UTC(), MintedBy: "nova-api", TokenHashPrefix: "0123456789abcdef"})
}

// actOnKills ends sessions as their kill keys appear, until the test ends,
// and sends each kill it saw.
func (p *proxy) actOnKills(t *testing.T) <-chan registry.SessionKill {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kills := make(chan registry.SessionKill, 10)
	events := p.cli.Watch(ctx, registry.ProxyKillsPrefix(p.name), clientv3.WithPrefix(), clientv3.WithFilterDelete())
	go func() {
		for w := range events {
			for _, ev := range w.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), registry.ProxyKillsPrefix(p.name))
				var k registry.SessionKill
				_ = json.Unmarshal(ev.Kv.Value, &k)
				_, _ = p.cli.Delete(ctx, registry.SessionKey(p.name, id))
				kills <- k
			}
		}
	}()
	return kills
}

// asOperator is a call's context as the guard leaves it for an operator.
func asOperator(t *testing.T) context.Context {
	return authn.NewContext(testworld.Ctx(t), authn.Identity{Name: "alice", Role: authn.RoleOperator, Via: "certificate"})
}

func newService(t *testing.T, cli *clientv3.Client, o operations.Options) *operations.Server {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	o.Log = slog.New(slog.DiscardHandler)
	return operations.New(cli, o)
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, code)
	}
	if err != nil && strings.Contains(status.Convert(err).Message(), registry.Root) {
		t.Errorf("%s: message %q names an etcd key", what, status.Convert(err).Message())
	}
}

func TestListSessions(t *testing.T) {
	_, cli := etcd.Start(t)
	a, b := startProxy(t, cli, "novnc-a", "novnc"), startProxy(t, cli, "novnc-b", "novnc")
	a.open(t, "s1", vm1, "c1")
	a.open(t, "s2", vm2, "c2")
	b.open(t, "s3", vm1, "c2")
	svc := newService(t, cli, operations.Options{})

	for _, tc := range []struct {
		name string
		req  *consoleauthv1.ListSessionsRequest
		want []string
	}{
		{"all", &consoleauthv1.ListSessionsRequest{}, []string{"novnc-a/s1", "novnc-a/s2", "novnc-b/s3"}},
		{"instance", &consoleauthv1.ListSessionsRequest{InstanceUuid: strings.ToUpper(vm1)}, []string{"novnc-a/s1", "novnc-b/s3"}},
		{"proxy", &consoleauthv1.ListSessionsRequest{Proxy: "novnc-b"}, []string{"novnc-b/s3"}},
		{"host", &consoleauthv1.ListSessionsRequest{ComputeHost: "c2"}, []string{"novnc-a/s2", "novnc-b/s3"}},
		{"all filters", &consoleauthv1.ListSessionsRequest{InstanceUuid: vm1, Proxy: "novnc-a", ComputeHost: "c1"}, []string{"novnc-a/s1"}},
		{"no match", &consoleauthv1.ListSessionsRequest{Proxy: "novnc-c"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := svc.ListSessions(asOperator(t), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range resp.Sessions {
				got = append(got, s.Proxy+"/"+s.Id)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	resp, err := svc.ListSessions(asOperator(t), &consoleauthv1.ListSessionsRequest{Proxy: "novnc-a", InstanceUuid: vm1})
	if err != nil || len(resp.Sessions) != 1 {
		t.Fatalf("got %v, %v; want one session", resp, err)
	}
	s := resp.Sessions[0]
	if s.InstanceUuid != vm1 || s.ComputeHost != "c1" || s.Client != "192.0.2.7" || s.MintedBy != "nova-api" ||
		s.TokenHashPrefix != "0123456789ab" || s.Started == nil || s.BytesToClient != 10 {
		t.Errorf("session: got %v, want the record's fields (token hash cut to 12 digits)", s)
	}

	for _, tc := range []struct {
		name string
		req  *consoleauthv1.ListSessionsRequest
	}{
		{"bad instance", &consoleauthv1.ListSessionsRequest{InstanceUuid: "not-a-uuid"}},
		{"bad proxy", &consoleauthv1.ListSessionsRequest{Proxy: "a/b"}},
		{"long proxy", &consoleauthv1.ListSessionsRequest{Proxy: strings.Repeat("p", 200)}},
		{"bad host", &consoleauthv1.ListSessionsRequest{ComputeHost: "c1/../x"}},
		{"long host", &consoleauthv1.ListSessionsRequest{ComputeHost: strings.Repeat("h", 300)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.ListSessions(asOperator(t), tc.req)
			wantCode(t, tc.name, err, codes.InvalidArgument)
		})
	}
}

func TestKillSession(t *testing.T) {
	_, cli := etcd.Start(t)
	a := startProxy(t, cli, "novnc-a", "novnc")
	a.open(t, "s1", vm1, "c1")
	a.open(t, "s2", vm1, "c1")
	kills := a.actOnKills(t)
	svc := newService(t, cli, operations.Options{})

	resp, err := svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Ended || resp.Session.GetProxy() != "novnc-a" || resp.Session.GetInstanceUuid() != vm1 {
		t.Errorf("kill: got %v, want the session on novnc-a, ended", resp)
	}
	if k := <-kills; k.Reason != "admin" || k.By != "alice" {
		t.Errorf("kill record: got %+v, want reason admin (the default) by alice", k)
	}
	// Ended, the kill key is gone with its lease.
	got, err := cli.Get(testworld.Ctx(t), registry.SessionKillKey("novnc-a", "s1"))
	if err != nil || len(got.Kvs) != 0 {
		t.Errorf("kill key after the session ended: got %v (%v), want none", got.Kvs, err)
	}

	if _, err := svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "s2", Reason: "deleted"}); err != nil {
		t.Fatal(err)
	}
	if k := <-kills; k.Reason != "deleted" {
		t.Errorf("kill record: got %+v, want reason deleted", k)
	}

	_, err = svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "s1"})
	wantCode(t, "kill an ended session", err, codes.NotFound)
	_, err = svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "nope"})
	wantCode(t, "kill an unknown session", err, codes.NotFound)
	_, err = svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "a/b"})
	wantCode(t, "bad session id", err, codes.InvalidArgument)
	_, err = svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "s1", Reason: "because I said so"})
	wantCode(t, "free-text reason", err, codes.InvalidArgument)
}

// A proxy that does not act within the wait: the kill stays asked (on its
// lease), and the answer says the session has not ended.
func TestKillSessionNotEnded(t *testing.T) {
	_, cli := etcd.Start(t)
	a := startProxy(t, cli, "xvp-a", "xvpvnc")
	a.open(t, "s1", vm1, "c1")
	svc := newService(t, cli, operations.Options{KillWait: 100 * time.Millisecond})
	resp, err := svc.KillSession(asOperator(t), &consoleauthv1.KillSessionRequest{SessionId: "s1", Reason: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Ended {
		t.Error("ended: got true, want false (no proxy acted)")
	}
	got, err := cli.Get(testworld.Ctx(t), registry.SessionKillKey("xvp-a", "s1"))
	if err != nil || len(got.Kvs) != 1 || got.Kvs[0].Lease == 0 {
		t.Fatalf("kill key: got %v (%v), want one, on a lease", got.Kvs, err)
	}
}

func TestDrainProxy(t *testing.T) {
	_, cli := etcd.Start(t)
	a := startProxy(t, cli, "novnc-a", "novnc")
	a.open(t, "s1", vm1, "c1")
	a.open(t, "s2", vm2, "c1")
	svc := newService(t, cli, operations.Options{Drain: 45 * time.Second})

	for _, tc := range []struct {
		name    string
		seconds int32
		want    time.Duration
	}{
		{"default", 0, 45 * time.Second},
		{"asked", 600, 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			resp, err := svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "novnc-a", DeadlineSeconds: tc.seconds})
			if err != nil {
				t.Fatal(err)
			}
			after := time.Now()
			deadline := resp.Deadline.AsTime()
			if resp.Proxy != "novnc-a" || resp.Sessions != 2 || deadline.Before(before.Add(tc.want)) || deadline.After(after.Add(tc.want)) {
				t.Errorf("got %v, want novnc-a, 2 sessions, deadline %v from now", resp, tc.want)
			}
			got, err := cli.Get(testworld.Ctx(t), registry.ProxyDrainKey("novnc-a"))
			if err != nil || len(got.Kvs) != 1 {
				t.Fatalf("drain key: got %v (%v), want one", got, err)
			}
			var d registry.ProxyDrain
			if err := json.Unmarshal(got.Kvs[0].Value, &d); err != nil || !d.Deadline.Equal(deadline) || d.By != "alice" {
				t.Errorf("drain record: got %+v (%v), want deadline %v by alice", d, err, deadline)
			}
			ttl, err := cli.TimeToLive(testworld.Ctx(t), clientv3.LeaseID(got.Kvs[0].Lease))
			if err != nil || time.Duration(ttl.GrantedTTL)*time.Second <= tc.want {
				t.Errorf("drain lease: got TTL %v (%v), want one outliving %v", ttl.GrantedTTL, err, tc.want)
			}
		})
	}

	_, err := svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "novnc-z"})
	wantCode(t, "drain an unknown proxy", err, codes.NotFound)
	_, err = svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "novnc-a", DeadlineSeconds: -1})
	wantCode(t, "negative deadline", err, codes.InvalidArgument)
	_, err = svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "novnc-a", DeadlineSeconds: 1 << 30})
	wantCode(t, "deadline over a day", err, codes.InvalidArgument)
	_, err = svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "../x"})
	wantCode(t, "bad proxy name", err, codes.InvalidArgument)
}

func TestGetStatus(t *testing.T) {
	srv, cli := etcd.Start(t)
	agent := testworld.StartAgent(t, cli, "compute-1")
	agent.AddInstance(t, vm1, testworld.Console{Host: "127.0.0.1", Port: 5900})
	agent.AddInstance(t, vm2, testworld.Console{Host: "127.0.0.1", Port: 5901})
	a, b := startProxy(t, cli, "novnc-a", "novnc"), startProxy(t, cli, "xvp-a", "xvpvnc")
	a.open(t, "s1", vm1, "compute-1")
	a.open(t, "s2", vm2, "compute-1")
	b.open(t, "s3", vm1, "compute-1")
	svc := newService(t, cli, operations.Options{Timeout: time.Second})
	if _, err := svc.DrainProxy(asOperator(t), &consoleauthv1.DrainProxyRequest{Proxy: "xvp-a", DeadlineSeconds: 30}); err != nil {
		t.Fatal(err)
	}

	st, err := svc.GetStatus(asOperator(t), &consoleauthv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !st.EtcdHealthy || st.Sessions != 3 {
		t.Errorf("got etcd_healthy %v, %d sessions; want true, 3", st.EtcdHealthy, st.Sessions)
	}
	if len(st.Agents) != 1 || st.Agents[0].Host != "compute-1" || st.Agents[0].Address != agent.Addr || st.Agents[0].Instances != 2 {
		t.Errorf("agents: got %v, want compute-1 at %s with 2 instances", st.Agents, agent.Addr)
	}
	if len(st.Proxies) != 2 {
		t.Fatalf("proxies: got %v, want novnc-a and xvp-a", st.Proxies)
	}
	if p := st.Proxies[0]; p.Name != "novnc-a" || p.ConsoleType != "novnc" || p.Sessions != 2 || p.Draining {
		t.Errorf("novnc-a: got %v, want novnc, 2 sessions, not draining", p)
	}
	if p := st.Proxies[1]; p.Name != "xvp-a" || p.Sessions != 1 || !p.Draining || p.DrainDeadline == nil {
		t.Errorf("xvp-a: got %v, want 1 session, draining (asked) with a deadline", p)
	}
	if len(st.EtcdMembers) != 1 || !st.EtcdMembers[0].Healthy || !st.EtcdMembers[0].Leader || st.EtcdMembers[0].DbSizeBytes == 0 ||
		!strings.Contains(st.EtcdMembers[0].Endpoint, srv.Endpoint) {
		t.Errorf("members: got %v, want one healthy leader at %s with a size", st.EtcdMembers, srv.Endpoint)
	}

	// etcd gone: still an answer, saying so.
	srv.Kill()
	st, err = svc.GetStatus(asOperator(t), &consoleauthv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("status without etcd: %v", err)
	}
	if st.EtcdHealthy || len(st.Agents) != 0 || len(st.EtcdMembers) != 1 || st.EtcdMembers[0].Healthy || st.EtcdMembers[0].Error == "" {
		t.Errorf("status without etcd: got %v, want unhealthy, no fleet, one member with an error", st)
	}
	_, err = svc.ListSessions(asOperator(t), &consoleauthv1.ListSessionsRequest{})
	wantCode(t, "list without etcd", err, codes.Unavailable)
	if msg := status.Convert(err).Message(); msg != authserver.UnavailableMessage {
		t.Errorf("list without etcd: got %q, want %q", msg, authserver.UnavailableMessage)
	}
}

// A 3-member cluster with one member down: healthy, one member says why.
func TestGetStatusMemberDown(t *testing.T) {
	c, cli := etcd.StartCluster(t, 3)
	svc := newService(t, cli, operations.Options{Timeout: 2 * time.Second})
	leader, err := c.Leader(testworld.Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	down := (leader + 1) % 3
	c.Kill(down)
	st, err := svc.GetStatus(asOperator(t), &consoleauthv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var healthy, leaders int
	for _, m := range st.EtcdMembers {
		if m.Healthy {
			healthy++
		}
		if m.Leader {
			leaders++
		}
		if m.Endpoint == "http://"+c.Members[down].Endpoint && (m.Healthy || m.Error == "") {
			t.Errorf("killed member %s: got %v, want unhealthy with an error", m.Endpoint, m)
		}
	}
	if !st.EtcdHealthy || len(st.EtcdMembers) != 3 || healthy != 2 || leaders != 1 {
		t.Errorf("got healthy %v, members %v; want healthy, 3 members, 2 healthy, 1 leader", st.EtcdHealthy, st.EtcdMembers)
	}
}
