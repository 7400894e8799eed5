package sessions

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
)

func TestEndInstanceEndsOnlyOlderSessionsOfThatInstance(t *testing.T) {
	tab := NewTable(0)
	var mu sync.Mutex
	ended := map[string]string{}
	add := func(name, instance string) *Entry {
		s, err := tab.Add(instance, func(reason string) {
			mu.Lock()
			ended[name] = reason
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	add("a1", "A")
	add("a2", "A")
	add("b1", "B")
	cut := time.Now()
	time.Sleep(time.Millisecond)
	add("a3", "A")

	if n := tab.EndInstance("A", registry.Revocation{Reason: "the instance was stopped", RevokedAt: cut}); n != 2 {
		t.Fatalf("ended %d sessions, want 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ended) != 2 || ended["a1"] != "the instance was stopped" || ended["a2"] == "" {
		t.Fatalf("got ended %v, want a1 and a2 with the reason", ended)
	}
}

func TestMaxPerInstance(t *testing.T) {
	tab := NewTable(2)
	noop := func(string) {}
	s1, _ := tab.Add("A", noop)
	if _, err := tab.Add("A", noop); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Add("A", noop); !errors.Is(err, ErrTooMany) {
		t.Fatalf("third session: got %v, want ErrTooMany", err)
	}
	if _, err := tab.Add("B", noop); err != nil {
		t.Fatalf("other instance: got %v, want nil", err)
	}
	tab.Remove(s1)
	if _, err := tab.Add("A", noop); err != nil {
		t.Fatalf("after a removal: got %v, want nil", err)
	}
}

func TestWait(t *testing.T) {
	tab := NewTable(0)
	s, _ := tab.Add("A", func(string) {})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := tab.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with a live session: got %v, want deadline exceeded", err)
	}
	go tab.Remove(s)
	if err := tab.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 0 {
		t.Fatalf("got %d live, want 0", tab.Len())
	}
}

func TestAddAtEndsSessionsCheckedBeforeARevocation(t *testing.T) {
	tab := NewTable(0)
	checked := time.Now()
	revokedAt := checked.Add(time.Millisecond) // revoked after the check, before the Add
	time.Sleep(2 * time.Millisecond)
	var got []string
	tab.AddAt("A", checked, 0, func(reason string) { got = append(got, "checked before: "+reason) })
	tab.Add("A", func(reason string) { got = append(got, "added now: "+reason) })
	if n := tab.EndInstance("A", registry.Revocation{Reason: "revoked", RevokedAt: revokedAt}); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
	if len(got) != 1 || got[0] != "checked before: revoked" {
		t.Fatalf("got %q, want only the session checked before the revocation ended", got)
	}
}

// With etcd revisions on both sides the order is etcd's, whatever the
// clocks say; without one of them it is the clocks'.
func TestEndInstanceOrdersByRevision(t *testing.T) {
	now := time.Now()
	past, future := now.Add(-time.Hour), now.Add(time.Hour) // consoleauth's clock behind, or ahead
	for _, tc := range []struct {
		name     string
		tokenRev int64
		r        registry.Revocation
		ended    bool
	}{
		{"older token, revocation stamped by a clock behind", 10, registry.Revocation{Revision: 20, RevokedAt: past}, true},
		{"newer token, revocation stamped by a clock ahead", 30, registry.Revocation{Revision: 20, RevokedAt: future}, false},
		{"the revocation's own revision", 20, registry.Revocation{Revision: 20, RevokedAt: future}, false},
		{"token without a revision: the clocks", 0, registry.Revocation{Revision: 20, RevokedAt: future}, true},
		{"revocation without a revision: the clocks", 10, registry.Revocation{RevokedAt: past}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewTable(0)
			ended := false
			tab.AddAt("A", now, tc.tokenRev, func(string) { ended = true })
			tc.r.Reason = "stopped"
			if n := tab.EndInstance("A", tc.r); (n == 1) != tc.ended || ended != tc.ended {
				t.Fatalf("got ended=%v (%d), want %v", ended, n, tc.ended)
			}
		})
	}
}
