package failban

import (
	"strconv"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(3, time.Minute)
	l.now = func() time.Time { return now }

	for i := range 3 {
		if ok, _ := l.Allowed("10.0.0.1"); !ok {
			t.Fatalf("attempt %d: got refused, want allowed", i+1)
		}
		l.Fail("10.0.0.1")
	}
	ok, wait := l.Allowed("10.0.0.1")
	if ok || wait != time.Minute {
		t.Fatalf("after 3 failures: got allowed=%v wait=%v, want refused for 1m", ok, wait)
	}
	if ok, _ := l.Allowed("10.0.0.2"); !ok {
		t.Fatal("another IP: got refused, want allowed")
	}
	now = now.Add(time.Minute)
	if ok, _ := l.Allowed("10.0.0.1"); !ok {
		t.Fatal("after the window: got refused, want allowed")
	}
}

func TestDisabled(t *testing.T) {
	l := New(0, time.Minute)
	for range 10 {
		l.Fail("10.0.0.1")
	}
	if ok, _ := l.Allowed("10.0.0.1"); !ok {
		t.Fatal("disabled limiter: got refused, want allowed")
	}
}

func TestBoundedMemory(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(1, time.Minute)
	l.now = func() time.Time { return now }
	for i := range MaxTracked + 10 {
		l.Fail(strconv.Itoa(i))
	}
	if got := len(l.entries); got > MaxTracked {
		t.Fatalf("got %d tracked, want at most %d", got, MaxTracked)
	}
	now = now.Add(2 * time.Minute)
	l.Fail("new")
	if got := len(l.entries); got != 1 {
		t.Fatalf("after expiry: got %d tracked, want 1 (expired evicted)", got)
	}
}
