package sessions

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/audit"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/pkg/requestid"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tokencheck"
)

// TokenChecker checks console tokens; *tokencheck.Checker is one. Its errors
// wrap the tokencheck reasons.
type TokenChecker interface {
	Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error)
}

// Live is where a proxy publishes its live sessions and takes the
// per-instance session slots shared by every proxy (*livesessions.Publisher
// in etcd). Publishing is best-effort and must never block.
type Live interface {
	// TakeSlot takes one of instance's slots 0..max-1 for session: ok
	// false without error when all are taken, an error when the store
	// could not answer. release frees it.
	TakeSlot(ctx context.Context, instance string, max int, session string) (release func(), ok bool, err error)
	// Publish queues a live session's record; remove unpublishes it.
	// bytes reports its counts so far.
	Publish(rec registry.LiveSession, bytes func() (toClient, toServer int64)) (remove func())
}

// Config is a Core's dependencies and limits.
type Config struct {
	// ConsoleType is the type of the tokens the proxy accepts ("novnc", "xvpvnc").
	ConsoleType string
	Checker     TokenChecker
	Dialer      backend.Dialer
	// FailBan slows down the token checks of a client address and token
	// prefix with too many invalid tokens (never refuses them); nil: no limit.
	FailBan *failban.Limiter
	// MaxPerInstance caps live sessions per instance; 0: no cap. With
	// Live, the cap holds across every proxy (Live.TakeSlot), besides
	// this proxy's own count.
	MaxPerInstance int
	// ProxyName names the proxy in live records and audit events.
	ProxyName string
	// Live, if not nil, gets every live session and holds the shared
	// per-instance cap. When it cannot answer, admission fails open to
	// the local cap (logged once per outage): an etcd outage must not
	// lock users out of their consoles.
	Live Live
	// Audit gets one event per session end and per refusal; nil: events
	// go to Log only.
	Audit *audit.Logger
	// EndCode and RefusalCode are the protocol codes a client gets when
	// the proxy ends or refuses its session (novnc-proxy's WebSocket close
	// codes), for audit events; nil: 0.
	EndCode     func(proxymetrics.EndReason) int
	RefusalCode func(proxymetrics.Refusal) int
	// Metrics counts attempts and sessions; nil: counted, not exported.
	Metrics *proxymetrics.Metrics
	Log     *slog.Logger

	// HandshakeTimeout is the longest handshake; a revocation is remembered
	// twice that long for handshakes in flight.
	HandshakeTimeout time.Duration
	// IdleTimeout ends a session in which no byte moved for that long; 0: never.
	IdleTimeout time.Duration
	// MaxSessionLength ends a session that long after it started; 0: never.
	MaxSessionLength time.Duration
	// EnforceSessionTimeout ends a session when its token expires.
	EnforceSessionTimeout bool
	// HalfCloseLinger ends a session whose one side closed once no byte
	// has moved for that long (relay.Relay.Linger); 0: relay.DefaultLinger.
	HalfCloseLinger time.Duration
	// RFB, when set, makes every session RFB-aware: the proxy runs the RFB
	// handshake with both sides as Nova's security proxy (auth_schemes,
	// VeNCrypt to the server). Nil relays bytes untouched, except for
	// view-only sessions, which always run the handshake (security none to
	// the server unless RFB says otherwise) so their input can be dropped.
	RFB *rfbproxy.Config
}

// Core is the part of a console proxy that both proxies share: admission
// and the life of every session. A proxy's edge parses its protocol's
// request, calls Admit, answers its client in its own protocol (a refusal,
// or the start of the session) and then calls Session.Run. Safe for
// concurrent use.
type Core struct {
	cfg   Config
	log   *slog.Logger
	table *Table

	unready  atomic.Bool // readiness is red: load balancers stop sending clients
	draining atomic.Bool // new sessions are refused (implies unready)
	stopping atomic.Bool // live sessions are being ended for shutdown

	mu      sync.Mutex
	revoked map[string]revocationMark // instance -> latest revocation, kept two handshakes long

	slotsDown atomic.Bool // Live could not take a slot: failing open (logged once)
	drainOnce sync.Once   // an operator's drain acts once
}

// New returns a Core; a zero HandshakeTimeout means 10 s.
func New(cfg Config) *Core {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.FailBan == nil {
		cfg.FailBan = failban.New(0, 0)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = proxymetrics.New(nil)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.New(cfg.Log)
	}
	return &Core{cfg: cfg, log: cfg.Log, table: NewTable(cfg.MaxPerInstance), revoked: map[string]revocationMark{}}
}

// Refusal is why a console attempt was not relayed. Each proxy answers it in
// its protocol: novnc-proxy with a close code and a sentence, xvp-proxy with
// a status line.
type Refusal struct {
	Why proxymetrics.Refusal
	// Message is safe to show the user: never an internal address.
	Message string
	// Err is the cause, for the log.
	Err error
	// Client is the client's address, for the audit event of a refusal
	// the edge made itself (Admit's carry it already).
	Client string

	event *audit.Event // the attempt as far as it went (Admit, Abort, Run)
}

// Attempt is one client's request for a console, as its edge read it.
type Attempt struct {
	// Start is when the client connected or sent its request: setup time
	// counts from it.
	Start    time.Time
	ClientIP string
	Token    string
	// Log carries the edge's attributes, the client's address among them
	// ("client"); the core adds token_hash, instance and session.
	Log *slog.Logger
}

// Refuse counts and logs a refusal; the edge then answers its client. Admit
// calls it for its own refusals; edges call it for theirs (a malformed
// request, a refused Origin). While the proxy is shutting down every
// refusal counts as a shutdown: the proxy cut the handshake.
func (c *Core) Refuse(log *slog.Logger, r *Refusal) {
	why := r.Why
	if c.stopping.Load() {
		why = proxymetrics.RefusedShutdown
	}
	c.cfg.Metrics.Refused(why)
	if log == nil {
		log = c.log
	}
	level := slog.LevelWarn
	switch why {
	case proxymetrics.RefusedClientGone, proxymetrics.RefusedShutdown, proxymetrics.RefusedRevoked:
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "console refused", "reason", why.String(), "message", r.Message, "error", r.Err)
	ev := audit.Event{Started: time.Now()}
	if r.event != nil {
		ev = *r.event
	}
	if ev.Client == "" {
		ev.Client = r.Client
	}
	ev.Event, ev.Reason, ev.Message = audit.Refusal, why.String(), r.Message
	if c.cfg.RefusalCode != nil {
		ev.Code = c.cfg.RefusalCode(why)
	}
	c.audit(ev)
}

// audit completes and writes an audit event.
func (c *Core) audit(ev audit.Event) {
	ev.Time = time.Now()
	ev.ConsoleType, ev.Proxy = c.cfg.ConsoleType, c.cfg.ProxyName
	if !ev.Started.IsZero() {
		ev.DurationSeconds = ev.Time.Sub(ev.Started).Seconds()
	}
	c.cfg.Audit.Write(ev)
}

// Admit runs every step of a console attempt that can fail, in order:
// shutdown, the client's failed-token limit (a wait, never a refusal), the
// token check, the
// instance's session cap, revocations seen during the handshake, and the
// dial. On success the session is registered and holds the VNC server's
// connection: the edge must end it with Run or Abort. ctx bounds the check
// and the dial.
func (c *Core) Admit(ctx context.Context, a Attempt) (*Session, *Refusal) {
	log := a.Log
	if log == nil {
		log = c.log
	}
	// The session id is born here and is the token check's request id, so
	// consoleauth's log line of the check carries it too.
	id := newID()
	ev := &audit.Event{Session: id, RequestID: id, Client: a.ClientIP, Started: a.Start}
	if ev.Started.IsZero() {
		ev.Started = time.Now()
	}
	log = log.With("session", id, requestid.LogKey, id)
	if a.Token != "" {
		ev.TokenHash = registry.HashPrefix(registry.TokenHash(a.Token))
		log = log.With("token_hash", ev.TokenHash)
	}
	refuse := func(r *Refusal) (*Session, *Refusal) {
		r.event = ev
		c.Refuse(log, r)
		return nil, r
	}
	if c.draining.Load() {
		return refuse(&Refusal{Why: proxymetrics.RefusedShutdown, Message: "proxy shutting down", Err: errors.New("draining")})
	}
	// A throttled client is slowed down, never refused: its token is
	// checked all the same, so a valid one behind a guesser's NAT connects.
	waited, err := c.cfg.FailBan.Wait(ctx, a.ClientIP, a.Token)
	if waited > 0 {
		c.cfg.Metrics.TokenCheckThrottled()
		log.Info("token check throttled after invalid tokens from this address", "waited", waited.String())
	}
	if err != nil {
		return refuse(&Refusal{Why: proxymetrics.RefusedClientGone, Message: "handshake ended while throttled", Err: err})
	}

	// A revocation stamped after this instant must end the session even if
	// it arrives before the session is in the table.
	checked := time.Now()
	info, err := c.cfg.Checker.Check(requestid.Outgoing(requestid.NewContext(ctx, id)), a.Token, c.cfg.ConsoleType)
	if err != nil {
		return refuse(c.tokenRefusal(a.ClientIP, a.Token, err))
	}
	log = log.With("instance", info.GetInstanceUuid())
	ev.Instance, ev.MintedBy = info.GetInstanceUuid(), info.GetMintedBy()

	s := &Session{core: c, ID: id, Info: info, Log: log, start: ev.Started, client: a.ClientIP, event: ev}
	entry, err := c.table.add(id, info.GetInstanceUuid(), checked, info.GetTokenRevision(), func(reason string) { s.end(c.endedBy(), reason) })
	if err != nil {
		return refuse(&Refusal{Why: proxymetrics.RefusedTooManySessions, Message: ErrTooMany.Error(), Err: err})
	}
	s.entry = entry
	if r := c.takeSlot(ctx, s); r != nil {
		s.unregister()
		return refuse(r)
	}
	if r, ok := c.revokedDuring(info.GetInstanceUuid(), info.GetTokenRevision(), checked); ok {
		s.end(proxymetrics.EndRevoked, r.Reason)
	}
	if r := s.endedEarly(); r != nil {
		s.unregister()
		return refuse(r)
	}

	dialer := c.cfg.Dialer
	if dialer.GreetingTimeout > 0 {
		dialer.OnSilent = func(attempt int) {
			c.cfg.Metrics.VNCSilent()
			log.Info("VNC server sent nothing: connection closed", "attempt", attempt, "waited", dialer.GreetingTimeout.String())
		}
	}
	vnc, err := dialer.Dial(ctx, info.GetHost(), info.GetPort(), info.GetInternalAccessPath())
	if r := s.endedEarly(); r != nil { // ended during the dial: its reason wins
		if vnc != nil {
			vnc.Close()
		}
		s.unregister()
		return refuse(r)
	}
	if err != nil {
		s.unregister()
		return refuse(&Refusal{Why: proxymetrics.RefusedVNCUnreachable, Message: backend.ErrUnreachable.Error(), Err: err})
	}
	if !s.attach(vnc) {
		s.unregister()
		return refuse(s.endedEarly())
	}
	return s, nil
}

// slotTimeout bounds taking an instance slot: an etcd that does not
// answer by then fails open rather than holding the handshake.
const slotTimeout = 2 * time.Second

// takeSlot holds one of the instance's cluster-wide session slots for s
// (Config.Live), or returns the refusal when every slot is taken. When the
// store cannot answer it admits (the local cap still holds), logging once
// per outage.
func (c *Core) takeSlot(ctx context.Context, s *Session) *Refusal {
	if c.cfg.Live == nil || c.cfg.MaxPerInstance <= 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, slotTimeout)
	defer cancel()
	release, ok, err := c.cfg.Live.TakeSlot(ctx, s.Info.GetInstanceUuid(), c.cfg.MaxPerInstance, s.ID)
	switch {
	case err != nil:
		if c.slotsDown.CompareAndSwap(false, true) {
			c.log.Warn("cluster-wide session cap unavailable (etcd unreachable): admitting under this proxy's max_sessions_per_instance only",
				"error", err, "max_sessions_per_instance", c.cfg.MaxPerInstance)
		}
		return nil
	case !ok:
		c.slotsBack()
		return &Refusal{Why: proxymetrics.RefusedTooManySessions, Message: ErrTooMany.Error(),
			Err: fmt.Errorf("%w: all %d slots of the instance are taken across the proxies", ErrTooMany, c.cfg.MaxPerInstance)}
	}
	c.slotsBack()
	s.mu.Lock()
	s.releases = append(s.releases, release)
	s.mu.Unlock()
	return nil
}

func (c *Core) slotsBack() {
	if c.slotsDown.CompareAndSwap(true, false) {
		c.log.Info("cluster-wide session cap available again")
	}
}

// Kill ends session id with the sentence of reason (a
// registry.RevocationReasons code; unknown ones are "admin"), as an
// operator asked, and reports whether the session is live here.
func (c *Core) Kill(id, reason, by string) bool {
	sentence, ok := registry.RevocationSentence(reason)
	if !ok || reason == "" {
		reason = "admin"
		sentence, _ = registry.RevocationSentence(reason)
	}
	found := c.table.EndID(id, sentence)
	c.log.Info("session kill", "session", id, "reason", reason, "by", by, "found", found)
	return found
}

// DrainUntil is an operator's drain (vncgatectl proxy drain) done as
// SIGTERM's: readiness red now while still admitting, no new sessions
// after delay, and at deadline the live sessions ended as by a shutdown
// (EndAll; novnc-proxy's 1012, on which the page reconnects elsewhere).
// The process goes on running. Only the first call acts.
func (c *Core) DrainUntil(delay time.Duration, deadline time.Time) {
	c.drainOnce.Do(func() {
		c.Unready()
		c.log.Info("operator drain: readiness red, still accepting", "shutdown_delay", delay.String(),
			"deadline", deadline.Format(time.RFC3339), "sessions", c.Len())
		time.AfterFunc(delay, func() {
			c.Drain()
			c.log.Info("operator drain: stopped accepting, draining", "sessions", c.Len())
		})
		time.AfterFunc(max(time.Until(deadline), delay), func() {
			c.log.Info("operator drain: deadline reached, ending sessions", "sessions", c.Len())
			c.EndAll()
		})
	})
}

// tokenRefusal sorts a failed check. Only an invalid token counts against
// the client and token prefix (failban): a token of the other console type
// is a real one, and an outage is nobody's guess.
func (c *Core) tokenRefusal(ip, token string, err error) *Refusal {
	switch {
	case errors.Is(err, tokencheck.ErrInvalid):
		c.cfg.FailBan.Fail(ip, token)
		return &Refusal{Why: proxymetrics.RefusedTokenInvalid, Message: tokencheck.ErrInvalid.Error(), Err: err}
	case errors.Is(err, tokencheck.ErrWrongType):
		return &Refusal{Why: proxymetrics.RefusedWrongType, Message: tokencheck.ErrWrongType.Error(), Err: err}
	case errors.Is(err, tokencheck.ErrMoved):
		return &Refusal{Why: proxymetrics.RefusedConsoleMoved, Message: tokencheck.ErrMoved.Error(), Err: err}
	}
	return &Refusal{Why: proxymetrics.RefusedUnavailable, Message: tokencheck.ErrUnavailable.Error(), Err: err}
}

// Revoke ends the live sessions of instance that r revokes (see Revokes),
// and remembers r for handshakes in flight whose token check preceded it
// but whose session is not registered yet.
func (c *Core) Revoke(instance string, r registry.Revocation) {
	c.mu.Lock()
	now := time.Now()
	for id, m := range c.revoked {
		if now.Sub(m.seen) > 2*c.cfg.HandshakeTimeout {
			delete(c.revoked, id)
		}
	}
	m := c.revoked[instance]
	m.seen = now
	m.r.Reason = r.Reason
	m.r.Revision = max(m.r.Revision, r.Revision)
	if r.RevokedAt.After(m.r.RevokedAt) {
		m.r.RevokedAt = r.RevokedAt
	}
	c.revoked[instance] = m
	c.mu.Unlock()
	n := c.table.EndInstance(instance, r)
	c.log.Info("console tokens revoked", "instance", instance, "reason", r.Reason, "revision", r.Revision, "sessions_ended", n)
}

// revokedDuring returns the remembered revocation of instance that
// revokes a token of revision tokenRev checked at checked.
func (c *Core) revokedDuring(instance string, tokenRev int64, checked time.Time) (registry.Revocation, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.revoked[instance]
	return m.r, ok && Revokes(m.r, tokenRev, checked)
}

// Revokes reports whether revocation r ends a session whose token record
// has etcd revision tokenRev (ConnectInfo.token_revision) and was checked at
// checked. With both revisions known it is etcd's order, which no clock can
// upset: the token was created before the revocation was written. Without
// one of them it falls back to the clocks: the check came before r.RevokedAt.
func Revokes(r registry.Revocation, tokenRev int64, checked time.Time) bool {
	if tokenRev > 0 && r.Revision > 0 {
		return tokenRev < r.Revision
	}
	return checked.Before(r.RevokedAt)
}

// revocationMark is a revocation remembered for handshakes in flight: the
// highest revision and latest time seen for the instance.
type revocationMark struct {
	r    registry.Revocation
	seen time.Time // local clock, for forgetting it
}

// endedBy is why the table ends a session: shutdown, else a revocation.
func (c *Core) endedBy() proxymetrics.EndReason {
	if c.stopping.Load() {
		return proxymetrics.EndShutdown
	}
	return proxymetrics.EndRevoked
}

// Unready turns readiness red (WriteHealth answers 503 "draining") while
// Admit still admits: the first phase of a shutdown, in which load
// balancers notice and clients they sent before noticing are still served.
func (c *Core) Unready() { c.unready.Store(true) }

// Drain turns readiness red and makes Admit refuse new sessions. Live
// sessions go on.
func (c *Core) Drain() {
	c.unready.Store(true)
	c.draining.Store(true)
}

// Draining reports whether readiness is red (Unready or Drain was called).
func (c *Core) Draining() bool { return c.unready.Load() }

// EndAll ends every live session for shutdown ("proxy shutting down"), and
// refuses new ones.
func (c *Core) EndAll() {
	c.unready.Store(true)
	c.draining.Store(true)
	c.stopping.Store(true)
	c.table.EndAll("proxy shutting down")
}

// Len is the number of live sessions, admitted ones included.
func (c *Core) Len() int { return c.table.Len() }

// Wait returns when no session is live, or with ctx's error.
func (c *Core) Wait(ctx context.Context) error { return c.table.Wait(ctx) }

// WriteHealth answers a health check (see Table.WriteHealth).
func (c *Core) WriteHealth(w http.ResponseWriter) { c.table.WriteHealth(w, c.unready.Load()) }

// Session is one admitted console: registered, its VNC server dialled.
type Session struct {
	core *Core
	// ID is the session's id, also its token check's request id.
	ID string
	// Info is where the token connects to.
	Info *consoleauthv1.ConnectInfo
	// Log carries the session's attributes; the edge may add its own
	// before Run.
	Log    *slog.Logger
	start  time.Time
	client string
	entry  *Entry
	event  *audit.Event // the audit event's fields known at admission

	unregistered sync.Once

	mu        sync.Mutex
	releases  []func() // instance slots, released by unregister
	unpublish func()   // the live record's removal: by unregister, or as the proxy ends the session
	vnc       net.Conn
	why       proxymetrics.EndReason // why the proxy ended the session; 0 while it runs
	message   string
	relay     *relay.Relay
	goodbye   func(proxymetrics.EndReason, string)
}

// Server is the VNC server's connection, for bytes the edge must send
// before the relay starts (a client's pipelined bytes).
func (s *Session) Server() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vnc
}

// Abort ends an admitted session that the edge could not start (the client
// went away before the upgrade or the answer, say) and counts it as why.
func (s *Session) Abort(why proxymetrics.Refusal, err error) {
	s.mu.Lock()
	if s.vnc != nil {
		s.vnc.Close()
	}
	s.mu.Unlock()
	s.unregister()
	s.core.Refuse(s.Log, &Refusal{Why: why, Message: "session not started", Err: err, event: s.event})
}

// unregister forgets the session: the table, its instance slot and its
// live record. Once.
func (s *Session) unregister() {
	s.unregistered.Do(func() {
		s.core.table.Remove(s.entry)
		s.mu.Lock()
		releases := s.releases
		if s.unpublish != nil {
			releases = append(releases, s.unpublish)
		}
		s.releases, s.unpublish = nil, nil
		s.mu.Unlock()
		for _, release := range releases {
			release()
		}
	})
}

// End ends the session with why; message is shown to the user where the
// protocol can. The first end wins.
func (s *Session) End(why proxymetrics.EndReason, message string) { s.end(why, message) }

func (s *Session) end(why proxymetrics.EndReason, message string) {
	s.mu.Lock()
	if s.why != 0 {
		s.mu.Unlock()
		return
	}
	s.why, s.message = why, message
	rl, goodbye, vnc, unpublish := s.relay, s.goodbye, s.vnc, s.unpublish
	s.mu.Unlock()
	if rl == nil { // not relaying yet: Admit or Run sees why
		if vnc != nil {
			vnc.Close()
		}
		return
	}
	if goodbye != nil {
		goodbye(why, message)
	}
	if unpublish != nil {
		// Over for operators now (a kill is confirmed by this), however
		// long the client takes to answer the goodbye.
		unpublish()
	}
	go rl.Close() // a protocol's goodbye may wait for the client
}

// attach gives the session its VNC connection, or closes it and reports
// false when the session already ended.
func (s *Session) attach(vnc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.why != 0 {
		vnc.Close()
		return false
	}
	s.vnc = vnc
	return true
}

// endedEarly is the refusal of a session ended before its relay started.
func (s *Session) endedEarly() *Refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.why {
	case 0:
		return nil
	case proxymetrics.EndShutdown:
		return &Refusal{Why: proxymetrics.RefusedShutdown, Message: s.message, Err: errors.New("ended before it started")}
	}
	return &Refusal{Why: proxymetrics.RefusedRevoked, Message: s.message, Err: errors.New("ended before it started")}
}

// Run relays between client and the VNC server until the session ends, then
// counts and logs its end once. When the proxy ends the session (revoked,
// a limit, shutdown, or End), goodbye, if not nil, is called first with why
// and the message, so the edge can tell its client in its protocol; then
// both connections are closed. Run ends the session's registration.
//
// An RFB-aware session (Config.RFB, or a view-only token) first runs the RFB
// handshake with both sides; when that fails, Run returns the refusal
// (counted and logged) for the edge to answer, and relays nothing.
func (s *Session) Run(client net.Conn, goodbye func(why proxymetrics.EndReason, message string)) *Refusal {
	defer s.unregister()
	cfg := s.core.cfg
	if s.RFBAware() {
		var r *Refusal
		if client, r = s.handshake(client); r != nil {
			r.event = s.event
			s.core.Refuse(s.Log, r)
			return r
		}
	}
	setup := time.Since(s.start)
	metrics := cfg.Metrics.Start(setup)
	s.Log.Info("session started", "vnc", net.JoinHostPort(s.Info.GetHost(), strconv.Itoa(int(s.Info.GetPort()))),
		"setup", setup.Round(time.Microsecond).String())

	rl := relay.New(client, s.vnc, cfg.IdleTimeout > 0)
	rl.Counter = metrics
	if cfg.HalfCloseLinger > 0 {
		rl.Linger = cfg.HalfCloseLinger
	}
	if cfg.Live != nil {
		remove := cfg.Live.Publish(registry.LiveSession{
			ID: s.ID, InstanceUUID: s.Info.GetInstanceUuid(), Proxy: cfg.ProxyName, ConsoleType: cfg.ConsoleType,
			Client: s.client, ComputeHost: s.Info.GetComputeHost(), Started: s.start, MintedBy: s.Info.GetMintedBy(),
			TokenHashPrefix: s.event.TokenHash,
		}, func() (toClient, toServer int64) {
			toServer, toClient = rl.Bytes()
			return toClient, toServer
		})
		s.mu.Lock()
		s.unpublish = remove
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.relay, s.goodbye = rl, goodbye
	why, message := s.why, s.message
	s.mu.Unlock()
	if why != 0 { // ended between Admit and Run
		if goodbye != nil {
			goodbye(why, message)
		}
		go rl.Close()
	}

	// Limits run as timers, not goroutines: an idle session costs none.
	var timers []*time.Timer
	if d := cfg.MaxSessionLength; d > 0 {
		timers = append(timers, time.AfterFunc(d, func() {
			s.end(proxymetrics.EndMaxLength, "session longer than "+d.String())
		}))
	}
	if cfg.EnforceSessionTimeout && s.Info.GetExpiresAt() != nil {
		timers = append(timers, time.AfterFunc(max(time.Until(s.Info.GetExpiresAt().AsTime()), 0), func() {
			s.end(proxymetrics.EndTokenExpired, "console token expired")
		}))
	}
	stopIdle := func() {}
	if d := cfg.IdleTimeout; d > 0 {
		stopIdle = watchIdle(rl, d, func() { s.end(proxymetrics.EndIdleTimeout, "idle for "+d.String()) })
	}

	res := rl.Run()
	stopIdle()
	for _, t := range timers {
		t.Stop()
	}

	s.mu.Lock()
	why, message = s.why, s.message
	s.mu.Unlock()
	attrs := []any{"duration", time.Since(s.start).Round(time.Millisecond).String(),
		"bytes_from_client", res.ClientToServer, "bytes_to_client", res.ServerToClient}
	ev := *s.event
	ev.Event, ev.BytesToClient, ev.BytesToServer = audit.SessionEnd, res.ServerToClient, res.ClientToServer
	if why == 0 {
		why = proxymetrics.EndServerClosed
		if res.FirstDone == relay.Client {
			why = proxymetrics.EndClientClosed
		}
		attrs = append(attrs, "ended_by", res.FirstDone.String())
		ev.EndedBy = res.FirstDone.String()
	} else {
		attrs = append(attrs, "ended_by", "proxy", "message", message)
		ev.EndedBy, ev.Message = "proxy", message
		if cfg.EndCode != nil {
			ev.Code = cfg.EndCode(why)
		}
	}
	ev.Reason = why.String()
	attrs = append(attrs, "reason", why.String())
	if res.ClientErr != nil {
		attrs = append(attrs, "client_error", res.ClientErr)
	}
	if res.ServerErr != nil {
		attrs = append(attrs, "server_error", res.ServerErr)
	}
	metrics.End(why, res)
	s.Log.Info("session ended", attrs...)
	s.core.audit(ev)
	return nil
}

// RFBAware reports whether Run speaks RFB with both sides before relaying:
// the proxy has auth_schemes, or the token is view-only. Bytes the client
// sent ahead then belong to that handshake, never straight to the server.
func (s *Session) RFBAware() bool { return s.core.cfg.RFB != nil || s.Info.GetViewOnly() }

// handshake runs the RFB handshake with both sides (package rfbproxy) and
// returns the client to relay from: for a view-only session, one that
// drops input. The session's VNC connection becomes the one the handshake
// returns (TLS after VeNCrypt).
func (s *Session) handshake(client net.Conn) (net.Conn, *Refusal) {
	cfg := s.core.cfg.RFB
	if cfg == nil {
		cfg = &rfbproxy.Config{AuthSchemes: []string{"none"}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.core.cfg.HandshakeTimeout)
	defer cancel()
	vnc, res, err := rfbproxy.Handshake(ctx, client, s.Server(), s.Info.GetHost(), cfg)
	if err != nil {
		s.Server().Close()
		if r := s.endedEarly(); r != nil { // revoked or shut down meanwhile
			return nil, r
		}
		switch {
		case errors.Is(err, rfbproxy.ErrSecurity):
			return nil, &Refusal{Why: proxymetrics.RefusedVNCSecurity, Message: rfbproxy.ErrSecurity.Error(), Err: err}
		case errors.Is(err, rfbproxy.ErrNotVNC):
			return nil, &Refusal{Why: proxymetrics.RefusedNotVNC, Message: rfbproxy.ErrNotVNC.Error(), Err: err}
		}
		return nil, &Refusal{Why: proxymetrics.RefusedClientGone, Message: rfbproxy.ErrClient.Error(), Err: err}
	}
	s.mu.Lock()
	s.vnc = vnc
	s.mu.Unlock()
	s.Log = s.Log.With("rfb_version", res.Version, "security_type", res.SecurityType, "view_only", s.Info.GetViewOnly())
	if s.Info.GetViewOnly() {
		client = rfbproxy.ViewOnly(client)
	}
	return client, nil
}

// watchIdle calls onIdle once r has been idle for d, checking with one timer
// re-armed for the time left, and returns a function that stops watching.
func watchIdle(r *relay.Relay, d time.Duration, onIdle func()) (stop func()) {
	var (
		mu      sync.Mutex
		t       *time.Timer
		stopped bool
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(d, func() {
		idle := r.IdleFor()
		if idle >= d {
			onIdle()
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(d - idle)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// newID is a session's id in logs: 64 random bits.
func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Error makes a Refusal an error, for logs and tests.
func (r *Refusal) Error() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: %s: %v", r.Why, r.Message, r.Err)
	}
	return r.Why.String() + ": " + r.Message
}
