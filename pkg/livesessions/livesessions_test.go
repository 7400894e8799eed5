package livesessions_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/livesessions"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/etcd"
)

const instance = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"

func testLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func start(t *testing.T, cli *clientv3.Client, name string) *livesessions.Publisher {
	t.Helper()
	p, err := livesessions.Start(livesessions.Options{
		Client: cli, Proxy: registry.Proxy{Name: name, ConsoleType: "novnc", Address: "127.0.0.1:6080"},
		TTL: 2 * time.Second, Refresh: time.Second, Log: testLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func client(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := etcdclient.New([]string{endpoint}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// waitKey waits until key's value satisfies ok (nil value: absent); the
// bound only stops a hang.
func waitKey(t *testing.T, cli *clientv3.Client, key string, ok func(v []byte) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cli.Get(ctx, key)
		cancel()
		if err == nil {
			var v []byte
			if len(resp.Kvs) > 0 {
				v = resp.Kvs[0].Value
			}
			if ok(v) {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not as wanted within 20s (last error %v)", key, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func present(v []byte) bool { return v != nil }
func absent(v []byte) bool  { return v == nil }

// TestPublishRefreshRemove: a session appears with its fields, its byte
// counts are refreshed, it disappears when removed, and Close takes the
// announcement away with the lease.
func TestPublishRefreshRemove(t *testing.T) {
	_, cli := etcd.Start(t)
	p := start(t, cli, "p1")
	var toClient, toServer atomic.Int64
	remove := p.Publish(registry.LiveSession{ID: "s1", InstanceUUID: instance, ConsoleType: "novnc", Client: "192.0.2.7", Started: time.Now()},
		func() (int64, int64) { return toClient.Load(), toServer.Load() })

	v := waitKey(t, cli, registry.SessionKey("p1", "s1"), present)
	var rec registry.LiveSession
	if err := json.Unmarshal(v, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Proxy != "p1" || rec.InstanceUUID != instance || rec.Client != "192.0.2.7" || rec.Updated.IsZero() {
		t.Errorf("record: got %+v", rec)
	}
	waitKey(t, cli, registry.ProxyKey("p1"), func(v []byte) bool {
		var px registry.Proxy
		return json.Unmarshal(v, &px) == nil && px.Name == "p1" && px.Address == "127.0.0.1:6080"
	})

	toClient.Store(1000)
	toServer.Store(20)
	waitKey(t, cli, registry.SessionKey("p1", "s1"), func(v []byte) bool {
		var r registry.LiveSession
		return json.Unmarshal(v, &r) == nil && r.BytesToClient == 1000 && r.BytesToServer == 20
	})

	p.SetDraining(time.Unix(2000000000, 0))
	waitKey(t, cli, registry.ProxyKey("p1"), func(v []byte) bool {
		var px registry.Proxy
		return json.Unmarshal(v, &px) == nil && px.Draining && px.DrainDeadline.Equal(time.Unix(2000000000, 0))
	})

	remove()
	waitKey(t, cli, registry.SessionKey("p1", "s1"), absent)
	p.Close()
	resp, err := cli.Get(context.Background(), registry.ProxyKey("p1"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("after Close: got %v, %v, want the announcement gone at once", resp.Kvs, err)
	}
}

// TestIdleSessionsCostNoWrites: sessions whose counts do not change are
// written once, not once per refresh.
func TestIdleSessionsCostNoWrites(t *testing.T) {
	_, cli := etcd.Start(t)
	p := start(t, cli, "p1")
	for i := range 300 {
		p.Publish(registry.LiveSession{ID: "s" + string(rune('a'+i%26)) + time.Duration(i).String(), InstanceUUID: instance},
			func() (int64, int64) { return 5, 5 })
	}
	// Wait for all 300, then for two refreshes.
	deadline := time.Now().Add(20 * time.Second)
	var rev int64
	for {
		resp, err := cli.Get(context.Background(), registry.ProxySessionsPrefix("p1"), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count == 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions published: %v, %v, want 300", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The first refresh writes the counts (0 -> 5); after that, nothing.
	w := cli.Watch(context.Background(), registry.ProxySessionsPrefix("p1"), clientv3.WithPrefix())
	var writes atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	wg.Go(func() {
		for {
			select {
			case r := <-w:
				for range r.Events {
					writes.Add(1)
				}
			case <-ctx.Done():
				return
			}
		}
	})
	// A marker session changes every refresh: once it has been written
	// three times, three refreshes passed.
	var n atomic.Int64
	p.Publish(registry.LiveSession{ID: "marker", InstanceUUID: instance}, func() (int64, int64) { return n.Add(1), 0 })
	seen := 0
	for seen < 4 {
		waitKey(t, cli, registry.SessionKey("p1", "marker"), func(v []byte) bool {
			var r registry.LiveSession
			if json.Unmarshal(v, &r) != nil || r.BytesToClient == 0 || r.Updated.UnixNano() == rev {
				return false
			}
			rev = r.Updated.UnixNano()
			return true
		})
		seen++
	}
	cancel()
	wg.Wait()
	// 300 count updates (0 -> 5) at most once, plus the marker's writes.
	if got := writes.Load(); got > 300+8 {
		t.Errorf("writes over ~4 refreshes: got %d, want at most %d (idle sessions rewritten)", got, 300+8)
	}
}

// TestShortSessionsCostNoWrites: a session that ends before it is
// PublishAfter old is never written (nor deleted); one that lives on is.
func TestShortSessionsCostNoWrites(t *testing.T) {
	_, cli := etcd.Start(t)
	p := start(t, cli, "p1")
	// The proxy's own record first: from then on the watch sees sessions only.
	waitKey(t, cli, registry.ProxyKey("p1"), func(v []byte) bool { return v != nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := cli.Watch(ctx, registry.ProxySessionsPrefix("p1"), clientv3.WithPrefix())
	for i := range 100 {
		remove := p.Publish(registry.LiveSession{ID: fmt.Sprintf("short%d", i), InstanceUUID: instance}, nil)
		remove()
	}
	p.Publish(registry.LiveSession{ID: "long", InstanceUUID: instance}, nil)
	waitKey(t, cli, registry.SessionKey("p1", "long"), func(v []byte) bool { return v != nil })
	// The watch's first event must be the long session's write.
	for {
		select {
		case r := <-w:
			if len(r.Events) == 0 {
				continue
			}
			if ev := r.Events[0]; string(ev.Kv.Key) != registry.SessionKey("p1", "long") {
				t.Fatalf("a session shorter than %v was written: %s %s", livesessions.PublishAfter, ev.Type, ev.Kv.Key)
			}
			return
		case <-time.After(20 * time.Second):
			t.Fatal("the watch never saw the long session's write")
		}
	}
}

// TestSlotsCapAcrossProxies: two proxies taking slots of one instance at
// once never hold more than the cap between them; a released slot is
// taken again.
func TestSlotsCapAcrossProxies(t *testing.T) {
	_, cli := etcd.Start(t)
	pubs := []*livesessions.Publisher{start(t, cli, "p1"), start(t, cli, "p2")}
	waitKey(t, cli, registry.ProxyKey("p1"), present) // leases held
	waitKey(t, cli, registry.ProxyKey("p2"), present)
	const cap, tries = 3, 20
	var (
		mu       sync.Mutex
		releases []func()
		wg       sync.WaitGroup
	)
	for i := range tries {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			release, ok, err := pubs[i%2].TakeSlot(ctx, instance, cap, "s"+time.Duration(i).String())
			if err != nil {
				t.Errorf("take slot: %v", err)
				return
			}
			if ok {
				mu.Lock()
				releases = append(releases, release)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(releases) != cap {
		t.Fatalf("slots taken by %d concurrent attempts: got %d, want %d", tries, len(releases), cap)
	}
	resp, err := cli.Get(context.Background(), registry.InstanceSlotsPrefix(instance), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != cap {
		t.Fatalf("slot keys: got %v, %v, want %d", resp.Kvs, err, cap)
	}
	ctx := context.Background()
	if _, ok, err := pubs[0].TakeSlot(ctx, instance, cap, "late"); ok || err != nil {
		t.Fatalf("a fourth slot: got ok %v, %v, want refused", ok, err)
	}
	releases[0]()
	deadline := time.Now().Add(20 * time.Second)
	for {
		release, ok, err := pubs[1].TakeSlot(ctx, instance, cap, "after")
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a released slot was not taken again")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKillsAndDrains: a kill written for this proxy reaches OnKill and its
// key is deleted; one for another proxy does not; a drain reaches OnDrain.
func TestKillsAndDrains(t *testing.T) {
	_, cli := etcd.Start(t)
	// A kill written before the proxy starts is acted on too.
	kill, _ := json.Marshal(registry.SessionKill{Reason: "admin", By: "op"})
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("p1", "early"), string(kill)); err != nil {
		t.Fatal(err)
	}
	p := start(t, cli, "p1")
	kills := make(chan string, 10)
	drains := make(chan registry.ProxyDrain, 10)
	p.Watch(func(id string, k registry.SessionKill) {
		if k.Reason != "admin" || k.By != "op" {
			t.Errorf("kill %s: got %+v", id, k)
		}
		kills <- id
	}, func(d registry.ProxyDrain) { drains <- d })

	recv := func(what string, ch <-chan string) string {
		t.Helper()
		select {
		case v := <-ch:
			return v
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: none within 20s", what)
			return ""
		}
	}
	if got := recv("kill written before start", kills); got != "early" {
		t.Fatalf("kill: got %q, want early", got)
	}
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("p2", "other"), string(kill)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), registry.SessionKillKey("p1", "s7"), string(kill)); err != nil {
		t.Fatal(err)
	}
	if got := recv("kill", kills); got != "s7" {
		t.Fatalf("kill: got %q, want s7 (not p2's)", got)
	}
	waitKey(t, cli, registry.SessionKillKey("p1", "s7"), absent)
	waitKey(t, cli, registry.SessionKillKey("p1", "early"), absent)

	deadline := time.Now().Add(time.Minute).Truncate(time.Second)
	d, _ := json.Marshal(registry.ProxyDrain{Deadline: deadline, By: "op"})
	if _, err := cli.Put(context.Background(), registry.ProxyDrainKey("p1"), string(d)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-drains:
		if !got.Deadline.Equal(deadline) || got.By != "op" {
			t.Errorf("drain: got %+v", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("drain: none within 20s")
	}
}

// TestLeaseLostAndRegranted: a proxy cut from etcd longer than its lease's
// TTL loses its records (as a dead proxy does); back, it grants a new
// lease and publishes everything again, slots included. TakeSlot meanwhile
// says etcd is unreachable.
func TestLeaseLostAndRegranted(t *testing.T) {
	srv, cli := etcd.Start(t)
	link := srv.NewLink(t)
	p := start(t, client(t, link.Addr), "p1")
	p.Publish(registry.LiveSession{ID: "s1", InstanceUUID: instance}, nil)
	waitKey(t, cli, registry.SessionKey("p1", "s1"), present)
	ctx := context.Background()
	if _, ok, err := p.TakeSlot(ctx, instance, 1, "s1"); !ok || err != nil {
		t.Fatalf("take slot: %v, %v", ok, err)
	}
	slot := registry.InstanceSlotKey(instance, 0)
	waitKey(t, cli, slot, present)

	link.Cut()
	// The TTL passes: everything on the lease goes.
	waitKey(t, cli, registry.SessionKey("p1", "s1"), absent)
	waitKey(t, cli, registry.ProxyKey("p1"), absent)
	waitKey(t, cli, slot, absent)
	tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, ok, err := p.TakeSlot(tctx, instance, 1, "s2"); ok || err == nil {
		t.Errorf("take slot cut off from etcd: got ok %v, %v, want an error", ok, err)
	}

	link.Restore()
	waitKey(t, cli, registry.SessionKey("p1", "s1"), present)
	waitKey(t, cli, registry.ProxyKey("p1"), present)
	waitKey(t, cli, slot, func(v []byte) bool { return string(v) == "p1/s1" })
}

func TestStartRefuses(t *testing.T) {
	_, cli := etcd.Start(t)
	for _, tt := range []struct {
		name string
		opts livesessions.Options
	}{
		{"no client", livesessions.Options{Proxy: registry.Proxy{Name: "p1"}}},
		{"bad name", livesessions.Options{Client: cli, Proxy: registry.Proxy{Name: "p/1"}}},
		{"short ttl", livesessions.Options{Client: cli, Proxy: registry.Proxy{Name: "p1"}, TTL: time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := livesessions.Start(tt.opts); err == nil {
				p.Close()
				t.Fatal("got nil, want an error")
			}
		})
	}
}

func TestDefaultName(t *testing.T) {
	a, b := livesessions.DefaultName("novnc", 6080), livesessions.DefaultName("xvpvnc", 6081)
	if a == b || registry.CheckProxyName(a) != nil || registry.CheckProxyName(b) != nil {
		t.Errorf("default names %q and %q: want two valid, different names", a, b)
	}
	if c, d := livesessions.DefaultName("novnc", 0), livesessions.DefaultName("novnc", 0); c == d || registry.CheckProxyName(c) != nil {
		t.Errorf("default names on port 0 %q and %q: want two valid, different names", c, d)
	}
}

// TestUnderEtcdRoles: under etcd authentication with pkg/etcdclient's
// plan, a proxy whose name is its certificate's CN publishes, takes slots,
// acts on (and deletes) its kills, reads its drain and revokes its lease,
// all with its own role; consoleauth's user writes the kill and the drain.
func TestUnderEtcdRoles(t *testing.T) {
	srv := etcd.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := (etcdclient.Roles{ProxyUsers: []string{"np1"}}).Apply(ctx, srv.ClientAs(t, "root")); err != nil {
		t.Fatal(err)
	}
	admin := srv.ClientAs(t, "consoleauth")
	p := start(t, srv.ClientAs(t, "np1"), "np1")
	kills := make(chan string, 1)
	drains := make(chan registry.ProxyDrain, 1)
	p.Watch(func(id string, _ registry.SessionKill) { kills <- id }, func(d registry.ProxyDrain) { drains <- d })
	p.Publish(registry.LiveSession{ID: "s1", InstanceUUID: instance}, nil)
	waitKey(t, admin, registry.SessionKey("np1", "s1"), present)
	waitKey(t, admin, registry.ProxyKey("np1"), present)
	if _, ok, err := p.TakeSlot(ctx, instance, 2, "s1"); !ok || err != nil {
		t.Fatalf("take slot: %v, %v", ok, err)
	}
	kill, _ := json.Marshal(registry.SessionKill{Reason: "admin", By: "op"})
	if _, err := admin.Put(ctx, registry.SessionKillKey("np1", "s1"), string(kill)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-kills:
	case <-time.After(20 * time.Second):
		t.Fatal("kill not seen")
	}
	waitKey(t, admin, registry.SessionKillKey("np1", "s1"), absent)
	d, _ := json.Marshal(registry.ProxyDrain{Deadline: time.Now().Add(time.Minute), By: "op"})
	if _, err := admin.Put(ctx, registry.ProxyDrainKey("np1"), string(d)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drains:
	case <-time.After(20 * time.Second):
		t.Fatal("drain not seen")
	}
	p.Close()
	if resp, err := admin.Get(ctx, registry.InstanceSlotsPrefix(instance), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("slots after Close (lease revoked): got %v, %v, want none", resp, err)
	}
	if resp, err := admin.Get(ctx, registry.ProxyKey("np1"), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("announcement after Close: got %v, %v, want none", resp, err)
	}
}
