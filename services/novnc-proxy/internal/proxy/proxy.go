// Package proxy is novnc-proxy's HTTP front door. It refuses what is not a
// console request (paths starting "//", methods other than GET and HEAD),
// answers /healthz and /metrics, hands page requests to the web handler,
// and turns every WebSocket upgrade, on any path, into a console session:
// check the token with consoleauth, check the Origin, dial the VNC server,
// then relay binary WebSocket messages to TCP and back.
//
// How failures are answered (the close codes are in package closecode):
//   - Requests that are not a console page's get a plain HTTP refusal with a
//     JSON body {"error": "...", "code": <HTTP status>}: 400 for "//" paths, a
//     malformed upgrade or a subprotocol offer without "binary" (noVNC's old
//     base64 mode); 405 for other methods; 403 for a refused Origin, always
//     before the upgrade, so a cross-origin page never gets an open WebSocket
//     nor learns whether a token is valid.
//   - Failures the user must understand (token invalid or expired, wrong
//     console type, console moved, VM unreachable, console service
//     unavailable, throttled, proxy shutting down) accept the upgrade and close
//     at once with a 4xxx code and a reason: a browser cannot read the HTTP
//     status of a failed upgrade, it only sees 1006.
//
// The checks run in the order token, Origin, dial (Nova's). A refused Origin
// wins over a token failure, for the reason above.
//
// Every upgrade request is counted once in Options.Metrics: as relayed, or
// under the reason it was refused; a relayed session's end is counted with
// its reason and bytes. GET /metrics serves Options.MetricsHandler.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/forwarded"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/origin"
)

// ConsoleType is the console type this proxy serves.
const ConsoleType = "novnc"

// TokenChecker checks console tokens; *tokencheck.Checker is one. Its errors
// wrap the tokencheck reasons.
type TokenChecker interface {
	Check(ctx context.Context, token, consoleType string) (*consoleauthv1.ConnectInfo, error)
}

// Options are the Server's dependencies and limits.
type Options struct {
	Checker  TokenChecker
	Dialer   backend.Dialer
	Origin   *origin.Policy
	Trust    forwarded.Trust
	Sessions *sessions.Table
	FailBan  *failban.Limiter
	// Web serves everything that is not an upgrade, /healthz nor /metrics.
	Web http.Handler
	Log *slog.Logger
	// Metrics counts sessions; nil: counted but not exported.
	Metrics *proxymetrics.Metrics
	// MetricsHandler, when set, answers GET /metrics.
	MetricsHandler http.Handler

	// HandshakeTimeout bounds the token check and the dial of one upgrade.
	HandshakeTimeout time.Duration
	// PingInterval is how often the proxy pings the browser; 0 disables it.
	// A ping not answered within the interval ends the session.
	PingInterval time.Duration
	// IdleTimeout ends a session in which no byte moved for that long; 0: never.
	IdleTimeout time.Duration
	// MaxSessionLength ends sessions that long; 0: never.
	MaxSessionLength time.Duration
	// EnforceSessionTimeout ends a session when its token expires.
	EnforceSessionTimeout bool
	// RevocationGrace is how long a session whose VNC server closed first
	// waits for a revocation before it closes with 1000: a hypervisor closes
	// the VNC socket of a stopped VM before it reports the stop, and the
	// revocation carries the sentence the user should see. 0: no wait.
	RevocationGrace time.Duration
}

// Server is an http.Handler; see the package comment.
type Server struct {
	opts     Options
	log      *slog.Logger
	draining atomic.Bool // readiness is red; new upgrades are told 1001
	stopping atomic.Bool // sessions are being ended for shutdown
}

// New returns a Server. Options.Checker, Origin, Sessions, FailBan and Web
// are required.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = proxymetrics.New(nil)
	}
	return &Server{opts: opts, log: opts.Log}
}

// Drain turns readiness red: /healthz answers 503 and new upgrades are
// closed with 1001. Live sessions go on.
func (s *Server) Drain() { s.draining.Store(true) }

// EndSessions ends every live session with 1001 "proxy shutting down".
func (s *Server) EndSessions() {
	s.draining.Store(true)
	s.stopping.Store(true)
	s.opts.Sessions.EndAll("proxy shutting down")
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "//") || strings.HasPrefix(r.URL.Path, "/\\"):
		// websockify's open redirect: "//evil.example/" became a redirect
		// to another site.
		writeError(w, http.StatusBadRequest, "path must not start with //")
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
	case headerHasToken(r.Header, "Upgrade", "websocket"):
		s.serveWebSocket(w, r)
	case r.URL.Path == "/healthz":
		s.serveHealth(w)
	case r.URL.Path == "/metrics" && s.opts.MetricsHandler != nil:
		s.opts.MetricsHandler.ServeHTTP(w, r)
	default:
		s.opts.Web.ServeHTTP(w, r)
	}
}

func (s *Server) serveHealth(w http.ResponseWriter) {
	s.opts.Sessions.WriteHealth(w, s.draining.Load())
}

// writeError answers with an HTTP status and a JSON body.
func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}{msg, status})
}

// headerHasToken reports whether a comma-separated header has token.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// checkUpgrade refuses malformed upgrades before any work is done.
func checkUpgrade(r *http.Request) error {
	if r.Method != http.MethodGet {
		return errors.New("websocket upgrade needs GET")
	}
	if !r.ProtoAtLeast(1, 1) {
		return errors.New("websocket upgrade needs HTTP/1.1")
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") {
		return errors.New("websocket upgrade needs Connection: Upgrade")
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		return errors.New("websocket upgrade needs Sec-WebSocket-Version: 13")
	}
	if r.Header.Get("Sec-WebSocket-Key") == "" {
		return errors.New("websocket upgrade needs Sec-WebSocket-Key")
	}
	var offered []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				offered = append(offered, p)
			}
		}
	}
	if len(offered) == 0 {
		return nil
	}
	for _, p := range offered {
		if p == "binary" {
			return nil
		}
	}
	return fmt.Errorf("websocket subprotocols %s not supported: this proxy speaks binary only (or no subprotocol)", strings.Join(offered, ", "))
}

// tokenOf is the last token in the query, else the token cookie (noVNC's
// older convention), as Nova reads it.
func tokenOf(r *http.Request) string {
	if v := r.URL.Query()["token"]; len(v) > 0 && v[len(v)-1] != "" {
		return v[len(v)-1]
	}
	if c, err := r.Cookie("token"); err == nil {
		return c.Value
	}
	return ""
}

// refusal is a failure answered after the upgrade.
type refusal struct {
	code   closecode.Code
	reason string // sent to the user: never an internal address
	err    error  // logged
	result proxymetrics.Refusal
}

// checkToken asks consoleauth; failures are sorted into close codes.
func (s *Server) checkToken(ctx context.Context, ip, token string) (*consoleauthv1.ConnectInfo, *refusal) {
	if ok, wait := s.opts.FailBan.Allowed(ip); !ok {
		return nil, &refusal{closecode.Throttled,
			fmt.Sprintf("too many failed console tokens from your address; retry in %d s", int(wait.Seconds())+1),
			errors.New("client throttled after failed tokens"), proxymetrics.RefusedThrottled}
	}
	info, err := s.opts.Checker.Check(ctx, token, ConsoleType)
	switch {
	case err == nil:
		return info, nil
	case errors.Is(err, tokencheck.ErrInvalid):
		s.opts.FailBan.Fail(ip)
		return nil, &refusal{closecode.TokenInvalid, tokencheck.ErrInvalid.Error(), err, proxymetrics.RefusedTokenInvalid}
	case errors.Is(err, tokencheck.ErrWrongType):
		s.opts.FailBan.Fail(ip)
		return nil, &refusal{closecode.WrongType, tokencheck.ErrWrongType.Error(), err, proxymetrics.RefusedWrongType}
	case errors.Is(err, tokencheck.ErrMoved):
		return nil, &refusal{closecode.Moved, tokencheck.ErrMoved.Error(), err, proxymetrics.RefusedConsoleMoved}
	default:
		return nil, &refusal{closecode.Unavailable, tokencheck.ErrUnavailable.Error(), err, proxymetrics.RefusedUnavailable}
	}
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if err := checkUpgrade(r); err != nil {
		s.opts.Metrics.Refused(proxymetrics.RefusedBadRequest)
		s.log.Info("upgrade refused", "client", s.opts.Trust.ClientIP(r), "status", http.StatusBadRequest, "err", err)
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ip := s.opts.Trust.ClientIP(r)
	token := tokenOf(r)
	log := s.log.With("client", ip)
	if token != "" {
		log = log.With("token", registry.HashPrefix(registry.TokenHash(token)))
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.opts.HandshakeTimeout)
	defer cancel()

	var ref *refusal
	var info *consoleauthv1.ConnectInfo
	// A revocation stamped after this instant must end the session even if
	// it arrives before the session is in the table.
	checked := time.Now()
	if s.draining.Load() {
		ref = &refusal{closecode.ShuttingDown, "proxy shutting down", errors.New("draining"), proxymetrics.RefusedShutdown}
	} else {
		info, ref = s.checkToken(ctx, ip, token)
	}
	if err := s.opts.Origin.Check(r.Header.Get("Origin"), s.opts.Trust.Scheme(r)); err != nil {
		s.opts.Metrics.Refused(proxymetrics.RefusedOriginRefused)
		log.Warn("upgrade refused", "status", http.StatusForbidden, "err", err)
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	if ref != nil {
		s.refuse(w, r, log, ref)
		return
	}
	log = log.With("instance", info.GetInstanceUuid())

	sess := &session{srv: s, log: log}
	entry, err := s.opts.Sessions.AddAt(info.GetInstanceUuid(), checked, sess.end)
	if err != nil {
		s.refuse(w, r, log, &refusal{closecode.Throttled, sessions.ErrTooMany.Error(), err, proxymetrics.RefusedTooManySessions})
		return
	}
	defer s.opts.Sessions.Remove(entry)

	vnc, err := s.opts.Dialer.Dial(ctx, info.GetHost(), info.GetPort(), info.GetInternalAccessPath())
	if err != nil {
		s.refuse(w, r, log, &refusal{closecode.Unreachable, backend.ErrUnreachable.Error(), err, proxymetrics.RefusedVNCUnreachable})
		return
	}
	ws, err := s.accept(w, r)
	if err != nil {
		vnc.Close()
		s.opts.Metrics.Refused(proxymetrics.RefusedClientGone)
		log.Warn("upgrade failed", "err", err)
		return
	}
	cancel()
	setup := time.Since(start)
	log.Info("session started", "vnc", net.JoinHostPort(info.GetHost(), fmt.Sprint(info.GetPort())),
		"subprotocol", ws.Subprotocol(), "setup", setup)
	sess.run(ws, r.RemoteAddr, vnc, info, s.opts.Metrics.Start(setup))
}

// accept completes the upgrade, answering "binary" only when offered.
func (s *Server) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	// The server's read and write timeouts are for page requests: a
	// session lives as long as its limits say.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       []string{"binary"},
		InsecureSkipVerify: true, // the Origin was checked by the policy
	})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(-1) // messages are streamed, never held whole
	return ws, nil
}

// refuse accepts the upgrade and closes it at once with ref's code, so the
// page can tell the user why.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, log *slog.Logger, ref *refusal) {
	s.opts.Metrics.Refused(ref.result)
	log.Warn("console refused", "close_code", int(ref.code), "reason", ref.code.String(), "err", ref.err)
	ws, err := s.accept(w, r)
	if err != nil {
		log.Warn("upgrade failed", "err", err)
		return
	}
	ws.Close(websocket.StatusCode(ref.code), closeReason(ref.reason))
}

// session is one relayed console.
type session struct {
	srv   *Server
	log   *slog.Logger
	ended atomic.Pointer[func(closecode.Code, string)]
	early atomic.Pointer[string] // an end requested before the relay started
}

// end is the sessions.Table callback: revocation, or shutdown.
func (ss *session) end(reason string) {
	code := closecode.Revoked
	if ss.srv.stopping.Load() {
		code = closecode.ShuttingDown
	}
	if f := ss.ended.Load(); f != nil {
		(*f)(code, reason)
		return
	}
	ss.early.Store(&reason)
	if f := ss.ended.Load(); f != nil { // run raced with us
		(*f)(code, reason)
	}
}

// run relays until the session ends, enforcing its limits; it ends
// metrics when the relay is done.
func (ss *session) run(ws *websocket.Conn, remote string, vnc net.Conn, info *consoleauthv1.ConnectInfo, metrics *proxymetrics.Session) {
	opts := ss.srv.opts
	client := newWSConn(ws, remote, opts.RevocationGrace)
	rl := relay.New(client, vnc, opts.IdleTimeout > 0)

	// end decides the close code once and closes both ends; the close
	// handshake may wait, so it runs on its own goroutine.
	end := func(code closecode.Code, reason string) {
		if client.setClose(code, closeReason(reason)) {
			go rl.Close()
		}
	}
	ss.ended.Store(&end)
	if r := ss.early.Load(); r != nil {
		ss.end(*r)
	}

	// Limits run as timers, not goroutines: an idle session costs none.
	var stopped, pingFailed atomic.Bool
	var timers []*time.Timer
	after := func(d time.Duration, f func()) {
		timers = append(timers, time.AfterFunc(d, f))
	}
	if opts.MaxSessionLength > 0 {
		after(opts.MaxSessionLength, func() {
			end(closecode.SessionTooLong, fmt.Sprintf("session longer than %s", opts.MaxSessionLength))
		})
	}
	if opts.EnforceSessionTimeout && info.GetExpiresAt() != nil {
		after(max(time.Until(info.GetExpiresAt().AsTime()), 0), func() {
			end(closecode.TokenExpired, "console token expired")
		})
	}
	if opts.IdleTimeout > 0 {
		var t *time.Timer
		check := func() {
			idle := rl.IdleFor()
			if idle >= opts.IdleTimeout {
				end(closecode.IdleTimeout, fmt.Sprintf("idle for %s", opts.IdleTimeout))
				return
			}
			if !stopped.Load() {
				t.Reset(opts.IdleTimeout - idle)
			}
		}
		t = time.AfterFunc(opts.IdleTimeout, check)
		timers = append(timers, t)
	}
	if opts.PingInterval > 0 {
		var t *time.Timer
		ping := func() {
			ctx, cancel := context.WithTimeout(context.Background(), opts.PingInterval)
			defer cancel()
			if err := ws.Ping(ctx); err != nil {
				if client.setClose(closecode.Normal, "") { // nobody left to tell
					pingFailed.Store(true)
					ss.log.Info("client did not answer ping", "err", err)
					ws.CloseNow()
					rl.Close()
				}
				return
			}
			if !stopped.Load() {
				t.Reset(opts.PingInterval)
			}
		}
		t = time.AfterFunc(opts.PingInterval, ping)
		timers = append(timers, t)
	}

	res := rl.Run()
	stopped.Store(true)
	for _, t := range timers {
		t.Stop()
	}
	code, reason := client.closing()
	metrics.End(endReason(code, pingFailed.Load()), res)
	ss.log.Info("session ended",
		"close_code", int(code), "close_reason", reason, "first_done", res.FirstDone.String(),
		"bytes_from_client", res.ClientToServer, "bytes_to_client", res.ServerToClient,
		"client_err", res.ClientErr, "server_err", res.ServerErr)
}

// endReason names how a relayed session ended from its close code (0: the
// client ended it, no close frame sent).
func endReason(code closecode.Code, pingFailed bool) proxymetrics.EndReason {
	switch code {
	case 0:
		return proxymetrics.EndClientClosed
	case closecode.Normal:
		if pingFailed {
			return proxymetrics.EndPingTimeout
		}
		return proxymetrics.EndServerClosed
	case closecode.ShuttingDown:
		return proxymetrics.EndShutdown
	case closecode.TextFrame:
		return proxymetrics.EndProtocolError
	case closecode.Revoked:
		return proxymetrics.EndRevoked
	case closecode.IdleTimeout:
		return proxymetrics.EndIdleTimeout
	case closecode.SessionTooLong:
		return proxymetrics.EndMaxLength
	case closecode.TokenExpired:
		return proxymetrics.EndTokenExpired
	}
	return 0 // a refusal code: never the end of a relayed session
}
