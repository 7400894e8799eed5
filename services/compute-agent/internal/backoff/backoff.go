// Package backoff computes the waits between retries of the compute agent
// (libvirtd, QMP sockets, etcd, consoleauth): exponential, capped, with
// "equal jitter" so agents that lost the same server do not retry in step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay is the wait before retry number attempt (0 for the first): first
// doubled per attempt, capped at most, of which up to half is taken off at
// random.
func Delay(first, most time.Duration, attempt int) time.Duration {
	d := most
	if attempt < 30 {
		d = min(first<<attempt, most)
	}
	return d/2 + rand.N(d/2+1)
}

// Backoff counts attempts for Delay; the zero value with Min and Max set is
// ready. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the wait before the next retry.
func (b *Backoff) Next() time.Duration {
	d := Delay(b.Min, b.Max, b.attempt)
	b.attempt++
	return d
}

// Reset starts again from Min, after a success.
func (b *Backoff) Reset() { b.attempt = 0 }
