package revocation

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdembed/etcdtest"
	"github.com/vncgate/vncgate/pkg/registry"
)

func TestWatchSeesRevocationsAcrossAnEtcdRestart(t *testing.T) {
	srv, cli := etcdtest.Start(t)

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
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("got %q, want %q", g, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no revocation seen, want %q", want)
		}
	}
	time.Sleep(200 * time.Millisecond) // let the watch start
	revoke("uuid-1")
	expect("uuid-1: the instance was stopped")

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	revoke("uuid-2")
	expect("uuid-2: the instance was stopped")
}
