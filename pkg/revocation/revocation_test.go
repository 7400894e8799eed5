package revocation

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
)

func TestWatchSeesRevocationsAcrossAnEtcdRestart(t *testing.T) {
	srv, cli := etcd.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make(chan string, 10)
	go Watch(ctx, cli, slog.New(slog.DiscardHandler), func(uuid string, r registry.Revocation) {
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
