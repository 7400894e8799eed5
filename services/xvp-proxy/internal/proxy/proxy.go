// Package proxy is xvp-proxy's server: it reads one XVP request head from a
// Java VNC viewer, checks the token with consoleauth, dials the VNC server
// the token names, answers "HTTP/1.1 200 OK\r\n\r\n" and relays raw RFB.
//
// It promises:
//   - every step that can fail (head, throttle, token, session cap, dial)
//     runs before the 200, and each failure gets its own status line (see
//     replies.go) and one log line;
//   - the whole handshake, from accept to the 200, is bounded by
//     Config.HandshakeTimeout and reads at most 4 KiB; the deadline is
//     cleared once the 200 is sent;
//   - bytes the client pipelined after its head reach the VNC server first;
//   - the token is never logged: log lines carry a prefix of its SHA-256
//     and the client IP, never the request line;
//   - sessions end on a revocation of their instance (Revoke), idle
//     timeout, maximum length, or shutdown; raw RFB has no way to tell the
//     client why, so the proxy closes the TCP connection and logs the reason;
//   - every accepted connection is counted once in Config.Metrics: as
//     relayed, or under the reason it was refused; a relayed session's end
//     is counted with its reason and bytes.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/xvp-proxy/internal/xvphead"
)

// ConsoleType is the console type of the tokens this proxy accepts.
const ConsoleType = "xvpvnc"

// Defaults for a zero Config field.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
)

// lingerTimeout bounds how long a refused client may keep sending before
// the connection is closed: reading what it sent keeps the kernel from
// answering with a reset that would discard the refusal.
const lingerTimeout = 500 * time.Millisecond

// Config holds a Server's dependencies and limits.
type Config struct {
	Checker  *tokencheck.Checker
	Dialer   backend.Dialer
	Limiter  *failban.Limiter
	Sessions *sessions.Table
	Log      *slog.Logger
	// Metrics counts sessions; nil: counted but not exported.
	Metrics *proxymetrics.Metrics

	// HandshakeTimeout bounds reading the head, the token check, the dial
	// and the answer.
	HandshakeTimeout time.Duration
	// IdleTimeout ends a session in which no byte moved for that long; 0
	// means never.
	IdleTimeout time.Duration
	// MaxSessionLength ends a session that long after it started; 0 means never.
	MaxSessionLength time.Duration
	// DrainTimeout is how long Serve waits for live sessions after its
	// context ends before it closes them.
	DrainTimeout time.Duration
}

// Server serves XVP clients. Create it with New.
type Server struct {
	cfg Config
	log *slog.Logger

	draining atomic.Bool // Serve's context ended: no more accepts
	stopping atomic.Bool // the drain timed out: live sessions are being ended

	mu      sync.Mutex
	revoked map[string]time.Time // instance -> latest RevokedAt, kept one handshake long
}

// New returns a Server; zero timeouts get their defaults.
func New(cfg Config) *Server {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Limiter == nil {
		cfg.Limiter = failban.New(0, 0)
	}
	if cfg.Sessions == nil {
		cfg.Sessions = sessions.NewTable(0)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = proxymetrics.New(nil)
	}
	return &Server{cfg: cfg, log: cfg.Log, revoked: map[string]time.Time{}}
}

// Serve accepts clients on l until ctx ends, then stops accepting, waits up
// to DrainTimeout for live sessions and handshakes to end, closes those
// still open, and returns. It closes l. The error is nil after a shutdown,
// or the listener's error.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	// hard ends every connection; it outlives ctx by the drain.
	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	stopAccepting := context.AfterFunc(ctx, func() {
		s.draining.Store(true)
		l.Close()
	})
	defer stopAccepting()

	var wg sync.WaitGroup
	var serveErr error
	backoff := time.Duration(0)
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				serveErr = err
				break
			}
			// Out of file descriptors, say: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry_in", backoff.String())
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		wg.Go(func() {
			stop := context.AfterFunc(hard, func() { conn.Close() })
			defer stop()
			s.handle(hard, conn)
		})
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	s.log.Info("draining", "sessions", s.cfg.Sessions.Len(), "drain_timeout", s.cfg.DrainTimeout.String())
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn("drain timeout: closing live sessions", "sessions", s.cfg.Sessions.Len())
		s.stopping.Store(true)
		s.cfg.Sessions.EndAll("proxy shutting down")
		hardCancel()
		<-done
	}
	return serveErr
}

// Revoke ends the live sessions of instance whose token was checked before
// r.RevokedAt, and remembers the revocation for handshakes in flight whose
// check preceded it but whose session is not registered yet.
func (s *Server) Revoke(instance string, r registry.Revocation) {
	s.mu.Lock()
	now := time.Now()
	for id, at := range s.revoked {
		if now.Sub(at) > 2*s.cfg.HandshakeTimeout {
			delete(s.revoked, id)
		}
	}
	if r.RevokedAt.After(s.revoked[instance]) {
		s.revoked[instance] = r.RevokedAt
	}
	s.mu.Unlock()
	n := s.cfg.Sessions.EndInstance(instance, r.RevokedAt, "revoked: "+r.Reason)
	s.log.Info("console tokens revoked", "instance", instance, "reason", r.Reason, "sessions_ended", n)
}

// ServeHealth answers a health check: 200 {"status": "ok", "sessions": N}
// while the proxy accepts clients, 503 with "draining" once it stopped.
func (s *Server) ServeHealth(w http.ResponseWriter, _ *http.Request) {
	s.cfg.Sessions.WriteHealth(w, s.draining.Load())
}

// revokedAfter reports whether instance was revoked after t.
func (s *Server) revokedAfter(instance string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.revoked[instance]
	return ok && at.After(t)
}

// handle serves one client connection from accept to close.
func (s *Server) handle(ctx context.Context, conn net.Conn) {
	start := time.Now()
	ip := clientIP(conn)
	log := s.log.With("client", ip)
	deadline := start.Add(s.cfg.HandshakeTimeout)
	conn.SetDeadline(deadline)

	head, rest, err := xvphead.Read(conn)
	if err != nil {
		s.refuseHead(ctx, conn, log, err)
		return
	}
	log = log.With("token_hash", registry.HashPrefix(registry.TokenHash(head.Token)))

	if ok, wait := s.cfg.Limiter.Allowed(ip); !ok {
		log.Warn("refused: too many failed tokens from this client", "retry_in", wait.Round(time.Second).String())
		s.refused(ctx, proxymetrics.RefusedThrottled)
		refuse(conn, replyThrottled(wait))
		return
	}

	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	checked := time.Now()
	info, err := s.cfg.Checker.Check(hctx, head.Token, ConsoleType)
	if err != nil {
		s.refuseToken(ctx, conn, log, ip, err)
		return
	}
	instance := info.GetInstanceUuid()
	backendAddr := net.JoinHostPort(info.GetHost(), strconv.Itoa(int(info.GetPort())))
	log = log.With("instance", instance, "vnc", backendAddr)

	sess := &session{}
	sess.attach(conn)
	entry, err := s.cfg.Sessions.AddAt(instance, checked, func(reason string) { sess.end(s.endedBy(), reason) })
	if err != nil {
		log.Warn("refused: too many sessions for the instance", "err", err)
		s.refused(ctx, proxymetrics.RefusedTooManySessions)
		refuse(conn, replyTooMany)
		return
	}
	defer s.cfg.Sessions.Remove(entry)
	if s.revokedAfter(instance, checked) {
		entry.End("revoked during the handshake")
	}
	if reason := sess.endReason(); reason != "" {
		log.Info("session ended before it started", "reason", reason)
		s.refused(ctx, sess.refusal())
		return
	}

	server, err := s.cfg.Dialer.Dial(hctx, info.GetHost(), info.GetPort(), info.GetInternalAccessPath())
	if err != nil {
		if reason := sess.endReason(); reason != "" {
			log.Info("session ended before it started", "reason", reason)
			s.refused(ctx, sess.refusal())
			return
		}
		log.Warn("refused: vnc server unreachable", "err", err)
		s.refused(ctx, proxymetrics.RefusedVNCUnreachable)
		refuse(conn, replyBadGateway)
		return
	}
	if !sess.attach(server) {
		log.Info("session ended before it started", "reason", sess.endReason())
		s.refused(ctx, sess.refusal())
		return
	}
	server.SetDeadline(deadline)
	if len(rest) > 0 {
		if _, err := server.Write(rest); err != nil {
			log.Warn("refused: writing pipelined bytes to the vnc server", "err", err)
			s.refused(ctx, proxymetrics.RefusedVNCUnreachable)
			refuse(conn, replyBadGateway)
			server.Close()
			return
		}
	}
	if _, err := conn.Write(replyOK); err != nil {
		log.Info("client gone before the 200", "err", err)
		s.refused(ctx, proxymetrics.RefusedClientGone)
		conn.Close()
		server.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	server.SetDeadline(time.Time{})
	setup := time.Since(start)
	log.Info("session started", "method", head.Method, "handshake", setup.Round(time.Microsecond).String())
	s.relay(log, sess, conn, server, start, s.cfg.Metrics.Start(setup))
}

// refused counts a refused connection: under r, or as a shutdown when ctx
// (the proxy's hard stop) ended, since then the proxy cut the handshake.
func (s *Server) refused(ctx context.Context, r proxymetrics.Refusal) {
	if ctx.Err() != nil {
		r = proxymetrics.RefusedShutdown
	}
	s.cfg.Metrics.Refused(r)
}

// endedBy is why the sessions table ends a session: shutdown once the drain
// timed out, else a revocation.
func (s *Server) endedBy() proxymetrics.EndReason {
	if s.stopping.Load() {
		return proxymetrics.EndShutdown
	}
	return proxymetrics.EndRevoked
}

// relay runs a started session until both directions end or the proxy
// ends it, and logs and counts how it ended.
func (s *Server) relay(log *slog.Logger, sess *session, conn, server net.Conn, start time.Time, metrics *proxymetrics.Session) {
	r := relay.New(conn, server, s.cfg.IdleTimeout > 0)
	if d := s.cfg.MaxSessionLength; d > 0 {
		t := time.AfterFunc(d, func() { sess.end(proxymetrics.EndMaxLength, "max session length reached") })
		defer t.Stop()
	}
	if d := s.cfg.IdleTimeout; d > 0 {
		stop := watchIdle(r, d, func() { sess.end(proxymetrics.EndIdleTimeout, "idle timeout") })
		defer stop()
	}
	res := r.Run()
	metrics.End(sess.endedAs(res.FirstDone), res)

	attrs := []any{
		"duration", time.Since(start).Round(time.Millisecond).String(),
		"bytes_from_client", res.ClientToServer, "bytes_from_server", res.ServerToClient,
	}
	if reason := sess.endReason(); reason != "" {
		attrs = append(attrs, "ended_by", "proxy", "reason", reason)
	} else {
		attrs = append(attrs, "ended_by", res.FirstDone.String())
	}
	if res.ClientErr != nil {
		attrs = append(attrs, "client_err", res.ClientErr)
	}
	if res.ServerErr != nil {
		attrs = append(attrs, "server_err", res.ServerErr)
	}
	log.Info("session ended", attrs...)
}

// refuseHead answers and counts a head that could not be read or parsed.
func (s *Server) refuseHead(ctx context.Context, conn net.Conn, log *slog.Logger, err error) {
	var reply []byte
	why := proxymetrics.RefusedBadRequest
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded): // silent or slow client
		reply, why = replyTimeout, proxymetrics.RefusedHandshakeTimeout
	case errors.Is(err, xvphead.ErrEmpty): // a port probe
		log.Debug("closed before a request", "err", err)
		s.refused(ctx, proxymetrics.RefusedClientGone)
		conn.Close()
		return
	case errors.Is(err, xvphead.ErrIncomplete) && !errors.Is(err, io.EOF):
		log.Info("refused: connection failed during the request", "err", err)
		s.refused(ctx, proxymetrics.RefusedClientGone)
		conn.Close()
		return
	case errors.Is(err, xvphead.ErrIncomplete):
		reply = replyIncomplete
	case errors.Is(err, xvphead.ErrTooLong):
		reply = replyTooLong
	case errors.Is(err, xvphead.ErrNoToken):
		reply = replyNoToken
	case errors.Is(err, xvphead.ErrMethod):
		reply = replyMethod
	default:
		reply = replyMalformed
	}
	log.Info("refused: bad request", "err", err)
	s.refused(ctx, why)
	refuse(conn, reply)
}

// refuseToken answers and counts a failed token check; guesses count
// against the client's IP.
func (s *Server) refuseToken(ctx context.Context, conn net.Conn, log *slog.Logger, ip string, err error) {
	switch {
	case errors.Is(err, tokencheck.ErrInvalid), errors.Is(err, tokencheck.ErrWrongType):
		s.cfg.Limiter.Fail(ip)
		log.Warn("refused: bad token", "err", err)
		why := proxymetrics.RefusedTokenInvalid
		if errors.Is(err, tokencheck.ErrWrongType) {
			why = proxymetrics.RefusedWrongType
		}
		s.refused(ctx, why)
		refuse(conn, replyInvalidToken)
	case errors.Is(err, tokencheck.ErrMoved):
		log.Info("refused: console moved", "err", err)
		s.refused(ctx, proxymetrics.RefusedConsoleMoved)
		refuse(conn, replyMoved)
	default:
		log.Error("refused: token check failed", "err", err)
		s.refused(ctx, proxymetrics.RefusedUnavailable)
		refuse(conn, replyUnavailable)
	}
}

// refuse writes reply, then closes gracefully: it half-closes, reads what
// the client still sends for a moment, and closes.
func refuse(conn net.Conn, reply []byte) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(lingerTimeout))
	if _, err := conn.Write(reply); err != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.CopyN(io.Discard, conn, 64<<10)
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

func clientIP(conn net.Conn) string {
	host, _, err := net.SplitHostPort(conn.RemoteAddr().String())
	if err != nil {
		return conn.RemoteAddr().String()
	}
	return host
}

// session is what ending a session takes: closing its connections.
type session struct {
	mu     sync.Mutex
	reason string // why the proxy ended the session; empty while it runs
	why    proxymetrics.EndReason
	conns  []net.Conn
}

// end closes the session's connections; the first reason is kept.
func (s *session) end(why proxymetrics.EndReason, reason string) {
	if reason == "" {
		reason = "ended"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reason == "" {
		s.reason, s.why = reason, why
	}
	for _, c := range s.conns {
		c.Close()
	}
}

// attach adds c to the session, or closes it and returns false when the
// session has already ended.
func (s *session) attach(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reason != "" {
		c.Close()
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

func (s *session) endReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// endedAs is why a relayed session ended: the proxy's reason, else the side
// that finished first.
func (s *session) endedAs(first relay.Side) proxymetrics.EndReason {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.reason != "":
		return s.why
	case first == relay.Client:
		return proxymetrics.EndClientClosed
	}
	return proxymetrics.EndServerClosed
}

// refusal is how a session the proxy ended before it started is counted.
func (s *session) refusal() proxymetrics.Refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.why == proxymetrics.EndShutdown {
		return proxymetrics.RefusedShutdown
	}
	return proxymetrics.RefusedRevoked
}
