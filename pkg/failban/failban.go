// Package failban slows down token guessing: it counts failed token checks
// per client IP in a fixed window and refuses an IP that failed too often,
// until its window ends. Memory is bounded by MaxTracked entries.
package failban

import (
	"sync"
	"time"
)

// MaxTracked bounds how many IPs are remembered; past it, expired entries are
// dropped, and if none are expired new IPs are not tracked (fail open rather
// than grow without bound under a spoofed-source flood, which TCP makes hard).
const MaxTracked = 100_000

// Limiter is safe for concurrent use. The zero value is not usable: use New.
type Limiter struct {
	max    int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	fails int
	until time.Time // end of the window that started with the first failure
}

// New allows max failures per IP within window. max <= 0 disables the limit.
func New(max int, window time.Duration) *Limiter {
	return &Limiter{max: max, window: window, now: time.Now, entries: map[string]*entry{}}
}

// Allowed reports whether ip may try a token now, and if not, for how long
// it must wait.
func (l *Limiter) Allowed(ip string) (bool, time.Duration) {
	if l.max <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[ip]
	if !ok {
		return true, 0
	}
	now := l.now()
	if !now.Before(e.until) {
		delete(l.entries, ip)
		return true, 0
	}
	if e.fails >= l.max {
		return false, e.until.Sub(now)
	}
	return true, 0
}

// Fail records a failed token check from ip.
func (l *Limiter) Fail(ip string) {
	if l.max <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e, ok := l.entries[ip]
	if !ok || !now.Before(e.until) {
		if !ok && len(l.entries) >= MaxTracked && !l.evictExpired(now) {
			return
		}
		l.entries[ip] = &entry{fails: 1, until: now.Add(l.window)}
		return
	}
	e.fails++
}

func (l *Limiter) evictExpired(now time.Time) bool {
	n := len(l.entries)
	for ip, e := range l.entries {
		if !now.Before(e.until) {
			delete(l.entries, ip)
		}
	}
	return len(l.entries) < n
}
