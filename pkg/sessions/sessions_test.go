package sessions

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
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

	if n := tab.EndInstance("A", cut, "the instance was stopped"); n != 2 {
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
	tab.AddAt("A", checked, func(reason string) { got = append(got, "checked before: "+reason) })
	tab.Add("A", func(reason string) { got = append(got, "added now: "+reason) })
	if n := tab.EndInstance("A", revokedAt, "revoked"); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
	if len(got) != 1 || got[0] != "checked before: revoked" {
		t.Fatalf("got %q, want only the session checked before the revocation ended", got)
	}
}
