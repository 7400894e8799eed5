package registration

import (
	"sync"
	"time"
)

// revocationQueue holds the revocations consoleauth has not accepted yet:
// one entry per instance, at most max instances. It is safe for concurrent
// use; wake receives a signal whenever an entry is added or becomes due at
// once.
type revocationQueue struct {
	max  int
	wake chan struct{}

	mu      sync.Mutex
	pending map[string]*pendingRevocation
}

// pendingRevocation is one instance's revocation waiting to be sent.
type pendingRevocation struct {
	uuid, reason string
	// unpublish: delete this host's claim once the revocation landed.
	unpublish bool
	attempt   int       // failed attempts so far
	due       time.Time // not before
	version   uint64    // bumped on every change, to tell a stale attempt
}

func newRevocationQueue(max int) *revocationQueue {
	return &revocationQueue{max: max, wake: make(chan struct{}, 1), pending: map[string]*pendingRevocation{}}
}

// add queues the revocation of uuid, due now. An instance already pending
// takes the newer reason and keeps an unpublish asked for before. It
// reports false when the queue is full.
func (q *revocationQueue) add(uuid, reason string, unpublish bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	p, ok := q.pending[uuid]
	if !ok {
		if len(q.pending) >= q.max {
			return false
		}
		p = &pendingRevocation{uuid: uuid}
		q.pending[uuid] = p
	}
	p.reason = reason
	p.unpublish = p.unpublish || unpublish
	p.due = time.Time{}
	p.version++
	q.signal()
	return true
}

// runsHere cancels the unpublish of a pending revocation: the instance
// runs on this host again (its revocation still goes).
func (q *revocationQueue) runsHere(uuid string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if p, ok := q.pending[uuid]; ok && p.unpublish {
		p.unpublish = false
		p.version++
	}
}

// holdsClaim reports whether uuid waits for its revocation before being
// unpublished: its claim must stay until then.
func (q *revocationQueue) holdsClaim(uuid string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	p, ok := q.pending[uuid]
	return ok && p.unpublish
}

// next returns a copy of the entry due first and how long until it is due.
func (q *revocationQueue) next(now time.Time) (pendingRevocation, time.Duration, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var first *pendingRevocation
	for _, p := range q.pending {
		if first == nil || p.due.Before(first.due) {
			first = p
		}
	}
	if first == nil {
		return pendingRevocation{}, 0, false
	}
	return *first, first.due.Sub(now), true
}

// failed puts r back, due at due, unless it changed meanwhile (then it is
// due at once with its new reason).
func (q *revocationQueue) failed(r pendingRevocation, due time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if p, ok := q.pending[r.uuid]; ok && p.version == r.version {
		p.attempt++
		p.due = due
	}
}

// succeeded removes r, unless it changed meanwhile (a newer event: it goes
// again), and reports whether the instance is to be unpublished now.
func (q *revocationQueue) succeeded(r pendingRevocation) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	p, ok := q.pending[r.uuid]
	if !ok || p.version != r.version {
		return false
	}
	delete(q.pending, r.uuid)
	return p.unpublish
}

func (q *revocationQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// signal wakes the loop without blocking. Called with q.mu held.
func (q *revocationQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}
