package revocation

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
)

func TestWatchSeesRevocationsAcrossAnEtcdRestart(t *testing.T) {
	srv, cli := etcd.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make(chan string, 10)
	go Watch(ctx, cli, slog.New(slog.NewTextHandler(t.Output(), nil)), func(uuid string, r registry.Revocation) {
		got <- uuid + ": " + r.Reason
	})
	revoke := func(uuid string) {
		t.Helper()
		v, _ := json.Marshal(registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
		if _, err := cli.Put(ctx, registry.RevocationKey(uuid), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(want string) {
		t.Helper()
		for {
			select {
			case g := <-got:
				if strings.HasPrefix(g, "uuid-0:") { // the probes' late copies
					continue
				}
				if g != want {
					t.Fatalf("got %q, want %q", g, want)
				}
				return
			case <-ctx.Done():
				t.Fatalf("no revocation seen, want %q", want)
			}
		}
	}
	// The watch sees what is written after it started, which this test
	// cannot observe: write until the first revocation is seen.
	for seen := false; !seen; {
		revoke("uuid-0")
		select {
		case g := <-got:
			seen = g == "uuid-0: the instance was stopped"
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the watch never saw a revocation")
		}
	}
	revoke("uuid-1")
	expect("uuid-1: the instance was stopped")

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	revoke("uuid-2")
	expect("uuid-2: the instance was stopped")
}

func TestWatchReportsTheWritingRevision(t *testing.T) {
	_, cli := etcd.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make(chan registry.Revocation, 10)
	go Watch(ctx, cli, slog.New(slog.DiscardHandler), func(uuid string, r registry.Revocation) { got <- r })

	v, _ := json.Marshal(registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
	for {
		put, err := cli.Put(ctx, registry.RevocationKey("uuid-0"), string(v))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.Revision != put.Header.Revision {
				t.Fatalf("revision: got %d, want the put's %d", r.Revision, put.Header.Revision)
			}
			return
		case <-time.After(100 * time.Millisecond): // the watch may not have started yet
		case <-ctx.Done():
			t.Fatal("the watch never saw a revocation")
		}
	}
}

// TestWatchRecoversFromACompaction cuts the watcher off from etcd while
// revocations are written and compacted away: once back, it reports them
// from what is still in etcd, with their revisions.
func TestWatchRecoversFromACompaction(t *testing.T) {
	srv, cli := etcd.Start(t)
	link := srv.NewLink(t)
	watchCli, err := etcdclient.New([]string{link.Addr}, tlsconfig.Files{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watchCli.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make(chan string, 100)
	revs := map[string]int64{}
	var mu sync.Mutex
	go Watch(ctx, watchCli, slog.New(slog.DiscardHandler), func(uuid string, r registry.Revocation) {
		mu.Lock()
		revs[uuid] = r.Revision
		mu.Unlock()
		got <- uuid
	})
	put := func(uuid string) int64 {
		t.Helper()
		v, _ := json.Marshal(registry.Revocation{Reason: "the instance was deleted", RevokedAt: time.Now()})
		resp, err := cli.Put(ctx, registry.RevocationKey(uuid), string(v))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	for seen := false; !seen; {
		put("uuid-0")
		select {
		case <-got:
			seen = true
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the watch never saw a revocation")
		}
	}
	for len(got) > 0 {
		<-got
	}

	link.Cut()
	want := map[string]int64{"uuid-1": put("uuid-1"), "uuid-2": put("uuid-2")}
	// Compact past both, so that the watch cannot resume where it was.
	rev := put("filler")
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	link.Restore()

	for len(want) > 0 {
		select {
		case uuid := <-got:
			mu.Lock()
			r := revs[uuid]
			mu.Unlock()
			if w, ok := want[uuid]; ok {
				if r != w {
					t.Errorf("%s: revision %d, want %d", uuid, r, w)
				}
				delete(want, uuid)
			}
		case <-ctx.Done():
			t.Fatalf("not reported after the compaction: %v", want)
		}
	}
	// And the watch goes on.
	after := put("uuid-3")
	for {
		select {
		case uuid := <-got:
			if uuid != "uuid-3" {
				continue
			}
			mu.Lock()
			r := revs[uuid]
			mu.Unlock()
			if r != after {
				t.Errorf("uuid-3: revision %d, want %d", r, after)
			}
			return
		case <-ctx.Done():
			t.Fatal("no revocation reported after the recovery")
		}
	}
}

// TestWatchUnderTheProxyRole runs the watch as a proxy's etcd user with
// authentication on: it sees consoleauth's revocations. A user without the
// grant gets a clear error, logged as such.
func TestWatchUnderTheProxyRole(t *testing.T) {
	srv := etcd.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := (etcdclient.Roles{ComputeHosts: []string{"h1"}}).Apply(ctx, srv.ClientAs(t, "root")); err != nil {
		t.Fatal(err)
	}
	consoleauth := srv.ClientAs(t, "consoleauth")

	got := make(chan registry.Revocation, 10)
	go Watch(ctx, srv.ClientAs(t, "novnc-proxy"), slog.New(slog.DiscardHandler), func(_ string, r registry.Revocation) { got <- r })
	var logs testlog.Buffer
	go Watch(ctx, srv.ClientAs(t, "h1"), slog.New(slog.NewTextHandler(&logs, nil)), func(_ string, r registry.Revocation) {
		t.Errorf("h1 saw a revocation: %+v", r)
	})

	v, _ := json.Marshal(registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
	for seen := false; !seen; {
		put, err := consoleauth.Put(ctx, registry.RevocationKey("uuid-0"), string(v))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			seen = r.Revision == put.Header.Revision
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the proxy's watch never saw a revocation")
		}
	}
	for !strings.Contains(logs.String(), "level=ERROR") {
		select {
		case <-ctx.Done():
			t.Fatalf("no error logged for a user without the grant: %s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if out := logs.String(); !strings.Contains(out, "permission denied") || !strings.Contains(out, "the etcd user needs read on /vncgate/revocations/") {
		t.Errorf("log: got %s, want the permission and what is missing", out)
	}
}

// TestQuorumLossIsLoggedOnce takes the quorum away from a 3-member cluster
// under the watch: it logs one warning when the watch is lost, however many
// attempts follow, one note when it is back, and reports what is written
// after that.
func TestQuorumLossIsLoggedOnce(t *testing.T) {
	cluster, cli := etcd.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs testlog.Buffer
	got := make(chan string, 100)
	go Watch(ctx, cli, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		func(uuid string, _ registry.Revocation) { got <- uuid })
	put := func(uuid string) {
		t.Helper()
		v, _ := json.Marshal(registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
		if _, err := cli.Put(ctx, registry.RevocationKey(uuid), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	for seen := false; !seen; {
		put("uuid-0")
		select {
		case <-got:
			seen = true
		case <-time.After(100 * time.Millisecond): // the watch may not have started yet
		case <-ctx.Done():
			t.Fatal("the watch never saw a revocation")
		}
	}

	cluster.Kill(0, 1)
	// Several attempts fail while the quorum is away.
	awaitLog(ctx, t, &logs, `"attempt":3`)
	if err := cluster.Start(0, 1); err != nil {
		t.Fatal(err)
	}
	awaitLog(ctx, t, &logs, "revocation watch resumed")
	put("uuid-1")
	for uuid := ""; uuid != "uuid-1"; {
		select {
		case uuid = <-got:
		case <-ctx.Done():
			t.Fatal("no revocation reported after the quorum came back")
		}
	}

	out := logs.String()
	if n := strings.Count(out, `"level":"WARN"`); n != 1 || !strings.Contains(out, "revocation watch lost") {
		t.Errorf("warnings: got %d, want one saying the watch was lost:\n%s", n, out)
	}
	if n := strings.Count(out, "revocation watch resumed"); n != 1 {
		t.Errorf("recoveries logged: got %d, want 1:\n%s", n, out)
	}
	if strings.Contains(out, `"level":"ERROR"`) {
		t.Errorf("an error logged:\n%s", out)
	}
}

// awaitLog waits until logs contain s.
func awaitLog(ctx context.Context, t *testing.T, logs *testlog.Buffer, s string) {
	t.Helper()
	for !strings.Contains(logs.String(), s) {
		select {
		case <-ctx.Done():
			t.Fatalf("never logged %q:\n%s", s, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
