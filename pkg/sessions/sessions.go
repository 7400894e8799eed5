// Package sessions is the one session core of both console proxies
// (novnc-proxy, xvp-proxy): everything about a console session except the
// client's protocol. Core admits an attempt (shutdown, failed-token limit,
// which slows a check down and never refuses it, token check, per-instance
// cap, revocations seen during the handshake, dial) or returns one Refusal
// that each proxy answers in its protocol; Session runs the relay with its
// limits (idle, maximum length, token expiry, a half-closed session's
// linger), revocation and shutdown, and counts and logs its end once.
// Revocations are ordered by etcd revision (token record against revocation
// write), by the clocks only when a revision is unknown. Table tracks the
// live sessions, so a proxy can end an instance's sessions when its tokens are
// revoked, cap sessions per instance, and wait for them on shutdown (an
// http.Server does not track hijacked connections).
//
// Every session has an id, born at admission, which is also the request id
// of its token check (x-request-id). With a Live (package livesessions, in
// etcd) the core publishes each session while it runs, caps an instance's
// sessions across every proxy (failing open to its own cap while the store
// cannot answer), and an operator can end one (Core.Kill) or drain the
// proxy (Core.DrainUntil). Every session end and every refusal is one audit
// event (package audit).
package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
)

// ErrTooMany is returned by Add when an instance has its maximum of sessions.
var ErrTooMany = errors.New("too many console sessions for this instance")

// Entry is one live session in a Table.
type Entry struct {
	// ID is the session's id ("" for none): End finds it by it (EndID).
	ID       string
	Instance string
	// Started is when the session's token was checked.
	Started time.Time
	// TokenRevision is the etcd revision of the session's token record
	// (ConnectInfo.token_revision); 0 when unknown.
	TokenRevision int64
	end           func(reason string)
	once          sync.Once
}

// End asks the session's owner to end it, once; reason is shown to the user.
func (s *Entry) End(reason string) {
	s.once.Do(func() { s.end(reason) })
}

// Table is safe for concurrent use.
type Table struct {
	maxPerInstance int

	mu         sync.Mutex
	byInstance map[string]map[*Entry]struct{}
	byID       map[string]*Entry
	count      int
	changed    chan struct{} // closed and replaced on every Remove
}

// NewTable caps sessions per instance at maxPerInstance; 0 means no cap.
func NewTable(maxPerInstance int) *Table {
	return &Table{maxPerInstance: maxPerInstance, byInstance: map[string]map[*Entry]struct{}{}, byID: map[string]*Entry{}, changed: make(chan struct{})}
}

// Add registers a session of instance. end is called at most once, from any
// goroutine, to end it early; the owner must still call Remove when done.
func (t *Table) Add(instance string, end func(reason string)) (*Entry, error) {
	return t.AddAt(instance, time.Now(), 0, end)
}

// AddAt is Add for a session whose token, of etcd revision tokenRevision
// (0: unknown), was checked at started: EndInstance ends it for any
// revocation that Revokes it. A revocation handled before AddAt cannot
// reach it; Core remembers those.
func (t *Table) AddAt(instance string, started time.Time, tokenRevision int64, end func(reason string)) (*Entry, error) {
	return t.add("", instance, started, tokenRevision, end)
}

// add is AddAt of a session with an id (unique; "" for none).
func (t *Table) add(id, instance string, started time.Time, tokenRevision int64, end func(reason string)) (*Entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.byInstance[instance]
	if t.maxPerInstance > 0 && len(set) >= t.maxPerInstance {
		return nil, ErrTooMany
	}
	if set == nil {
		set = map[*Entry]struct{}{}
		t.byInstance[instance] = set
	}
	s := &Entry{ID: id, Instance: instance, Started: started, TokenRevision: tokenRevision, end: end}
	set[s] = struct{}{}
	if id != "" {
		t.byID[id] = s
	}
	t.count++
	return s, nil
}

// Remove forgets a session that ended.
func (t *Table) Remove(s *Entry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.byInstance[s.Instance]
	if _, ok := set[s]; !ok {
		return
	}
	delete(set, s)
	if s.ID != "" && t.byID[s.ID] == s {
		delete(t.byID, s.ID)
	}
	if len(set) == 0 {
		delete(t.byInstance, s.Instance)
	}
	t.count--
	close(t.changed)
	t.changed = make(chan struct{})
}

// Len is the number of live sessions.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count
}

// EndInstance ends the sessions of instance that r revokes (see Revokes),
// with r's reason, and returns how many it asked to end.
func (t *Table) EndInstance(instance string, r registry.Revocation) int {
	t.mu.Lock()
	var victims []*Entry
	for s := range t.byInstance[instance] {
		if Revokes(r, s.TokenRevision, s.Started) {
			victims = append(victims, s)
		}
	}
	t.mu.Unlock()
	for _, s := range victims {
		s.End(r.Reason)
	}
	return len(victims)
}

// EndID ends the session with id, with reason, and reports whether it is
// live here.
func (t *Table) EndID(id, reason string) bool {
	t.mu.Lock()
	s := t.byID[id]
	t.mu.Unlock()
	if s == nil {
		return false
	}
	s.End(reason)
	return true
}

// EndAll ends every session.
func (t *Table) EndAll(reason string) {
	t.mu.Lock()
	var all []*Entry
	for _, set := range t.byInstance {
		for s := range set {
			all = append(all, s)
		}
	}
	t.mu.Unlock()
	for _, s := range all {
		s.End(reason)
	}
}

// Wait returns when no session is live, or with ctx's error.
func (t *Table) Wait(ctx context.Context) error {
	for {
		t.mu.Lock()
		n, changed := t.count, t.changed
		t.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WriteHealth answers a proxy's health check: 200 {"status": "ok",
// "sessions": N} while it accepts consoles, 503 with "draining" once it
// stopped accepting (load balancers then send new clients elsewhere).
func (t *Table) WriteHealth(w http.ResponseWriter, draining bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	status, state := http.StatusOK, "ok"
	if draining {
		status, state = http.StatusServiceUnavailable, "draining"
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"status": state, "sessions": t.Len()})
}
