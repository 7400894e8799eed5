// Package failban slows down token guessing without ever refusing a token,
// and without letting one client lock out others who share its address (a
// NAT, a load balancer).
//
// It counts invalid tokens per key, the client's address and the token's
// prefix (the first hex digit of the token's SHA-256: 16 keys per address),
// in a fixed window: Limit failures per Window. A key over the limit is
// throttled until its window ends. A throttled key's token checks are spaced
// Window/Limit apart by a token bucket (golang.org/x/time/rate), and no check
// waits longer than half the time its handshake has left (MaxWait without a
// deadline); then it is checked like any other. So:
//   - a valid token always connects, throttled or not (at worst half a
//     handshake later);
//   - a guesser cannot lock anyone out, only delay the checks that share its
//     keys, and a client retrying one stale token delays only its own key;
//   - a throttled key gets one check per Window/Limit, plus those whose wait
//     ran out, which the proxies' connection caps bound
//     (max_connections_per_client per half handshake).
//
// The caller decides what counts as a failure: the proxies count invalid
// tokens only, never Origin refusals or an unavailable consoleauth. Memory
// is bounded by MaxTracked keys.
package failban

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxTracked bounds how many keys are remembered; past it, expired entries
// are dropped, and if none are expired new keys are not tracked (fail open
// rather than grow without bound).
const MaxTracked = 100_000

// MaxWait bounds a throttled check's wait when its context has no deadline.
const MaxWait = 5 * time.Second

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
	until time.Time     // end of the window that started with the first failure
	spray *rate.Limiter // the throttled key's checks, once fails reaches max
}

// New throttles a key after max failures within window. max <= 0 or
// window <= 0 disables the limit.
func New(max int, window time.Duration) *Limiter {
	if window <= 0 {
		max = 0
	}
	return &Limiter{max: max, window: window, now: time.Now, entries: map[string]*entry{}}
}

// key is the client's address and the first hex digit of the token's
// SHA-256: guesses spread over 16 keys per address, and a real user's
// token lands in one of them by chance, not by the guesser's choice.
func key(ip, token string) string {
	const hexDigits = "0123456789abcdef"
	sum := sha256.Sum256([]byte(token))
	return ip + "#" + string(hexDigits[sum[0]>>4])
}

// Wait delays a token check of token from ip when that key is throttled: it
// returns at the key's next slot or after half the time ctx has left,
// whichever comes first, with how long it planned to wait (0 when the key is
// not throttled). The error is ctx's, if ctx ended first; a caller then has
// no client to answer.
func (l *Limiter) Wait(ctx context.Context, ip, token string) (time.Duration, error) {
	if l.max <= 0 {
		return 0, nil
	}
	now := l.now()
	k := key(ip, token)
	l.mu.Lock()
	e, ok := l.entries[k]
	if ok && !now.Before(e.until) {
		delete(l.entries, k)
		ok = false
	}
	if !ok || e.spray == nil {
		l.mu.Unlock()
		return 0, nil
	}
	r := e.spray.ReserveN(now, 1)
	l.mu.Unlock()

	delay := r.DelayFrom(now)
	limit := MaxWait
	if deadline, ok := ctx.Deadline(); ok {
		limit = max(time.Until(deadline)/2, 0)
	}
	if delay > limit {
		// Checked at the limit instead: the slot goes back, so waits
		// never pile up beyond one interval.
		r.CancelAt(now)
		delay = limit
	}
	if delay <= 0 {
		return 0, nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return delay, nil
	case <-ctx.Done():
		return delay, ctx.Err()
	}
}

// Throttled reports whether checks of token from ip are throttled now.
func (l *Limiter) Throttled(ip, token string) bool {
	if l.max <= 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key(ip, token)]
	return ok && e.spray != nil && l.now().Before(e.until)
}

// Fail records an invalid token from ip.
func (l *Limiter) Fail(ip, token string) {
	if l.max <= 0 {
		return
	}
	k := key(ip, token)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e, ok := l.entries[k]
	if !ok || !now.Before(e.until) {
		if !ok && len(l.entries) >= MaxTracked && !l.evictExpired(now) {
			return
		}
		e = &entry{until: now.Add(l.window)}
		l.entries[k] = e
	}
	e.fails++
	if e.fails >= l.max && e.spray == nil {
		e.spray = rate.NewLimiter(rate.Every(l.window/time.Duration(l.max)), 1)
		e.spray.AllowN(now, 1) // the next check waits a whole interval
	}
}

func (l *Limiter) evictExpired(now time.Time) bool {
	n := len(l.entries)
	for k, e := range l.entries {
		if !now.Before(e.until) {
			delete(l.entries, k)
		}
	}
	return len(l.entries) < n
}
