package failban

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// tokenWithKey returns a token whose key digit is the same as (or, with
// same false, differs from) that of other.
func tokenWithKey(other string, same bool) string {
	for i := 0; ; i++ {
		tok := "token-" + strconv.Itoa(i)
		if (key("", tok) == key("", other)) == same && tok != other {
			return tok
		}
	}
}

func TestThrottledKeysWaitButAreNeverRefused(t *testing.T) {
	now := time.Unix(1000, 0)
	const interval = 100 * time.Millisecond
	l := New(2, 2*interval) // two failures in 200ms: one check per 100ms
	l.now = func() time.Time { return now }

	guess := "guess"
	for range 2 {
		if waited, _ := l.Wait(context.Background(), "10.0.0.1", guess); waited != 0 {
			t.Fatalf("before the limit: waited %v, want 0", waited)
		}
		l.Fail("10.0.0.1", guess)
	}
	sameKey, otherKey := tokenWithKey(guess, true), tokenWithKey(guess, false)
	for _, tc := range []struct {
		name, ip, token string
		throttled       bool
	}{
		{"the guessed token", "10.0.0.1", guess, true},
		{"another token of the same prefix", "10.0.0.1", sameKey, true},
		{"a token of another prefix from the same address", "10.0.0.1", otherKey, false},
		{"the same token from another address", "10.0.0.2", guess, false},
	} {
		if got := l.Throttled(tc.ip, tc.token); got != tc.throttled {
			t.Errorf("%s: throttled %v, want %v", tc.name, got, tc.throttled)
		}
	}

	// Throttled checks are spaced one interval apart, each waiting for
	// its slot: first the next, then the one after.
	for i, want := range []time.Duration{interval, 2 * interval} {
		waited, err := l.Wait(context.Background(), "10.0.0.1", sameKey)
		if err != nil || waited != want {
			t.Fatalf("throttled check %d: waited %v (%v), want %v", i+1, waited, err, want)
		}
	}
	// A handshake with little time left waits at most half of it, then is
	// checked all the same.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel()
	waited, err := l.Wait(ctx, "10.0.0.1", guess)
	if err != nil || waited <= 0 || waited > 30*time.Millisecond {
		t.Fatalf("throttled check with 60ms left: waited %v (%v), want at most 30ms", waited, err)
	}
	// The capped wait gave its slot back: the queue did not grow.
	if waited, _ := l.Wait(context.Background(), "10.0.0.1", guess); waited != 3*interval {
		t.Errorf("after a capped wait: waited %v, want %v (the slot after the last one kept)", waited, 3*interval)
	}

	now = now.Add(2 * interval)
	if l.Throttled("10.0.0.1", guess) {
		t.Error("after the window: still throttled")
	}
	if waited, _ := l.Wait(context.Background(), "10.0.0.1", guess); waited != 0 {
		t.Errorf("after the window: waited %v, want 0", waited)
	}
}

func TestWaitEndsWithItsContext(t *testing.T) {
	l := New(1, time.Hour)
	l.Fail("10.0.0.1", "guess")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := l.Wait(ctx, "10.0.0.1", "guess"); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return when its context ended")
	}
}

func TestDisabled(t *testing.T) {
	for _, l := range []*Limiter{New(0, time.Minute), New(3, 0)} {
		for range 10 {
			l.Fail("10.0.0.1", "guess")
		}
		if l.Throttled("10.0.0.1", "guess") {
			t.Fatal("disabled limiter: got throttled")
		}
		if waited, _ := l.Wait(context.Background(), "10.0.0.1", "guess"); waited != 0 {
			t.Fatalf("disabled limiter: waited %v", waited)
		}
	}
}

func TestBoundedMemory(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(1, time.Minute)
	l.now = func() time.Time { return now }
	for i := range MaxTracked + 10 {
		l.Fail(strconv.Itoa(i), "guess")
	}
	if got := len(l.entries); got > MaxTracked {
		t.Fatalf("got %d tracked, want at most %d", got, MaxTracked)
	}
	now = now.Add(2 * time.Minute)
	l.Fail("new", "guess")
	if got := len(l.entries); got != 1 {
		t.Fatalf("after expiry: got %d tracked, want 1 (expired evicted)", got)
	}
}
