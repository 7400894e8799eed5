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
//     unavailable, too many sessions, proxy shutting down) accept the upgrade and close
//     at once with a 4xxx code and a reason: a browser cannot read the HTTP
//     status of a failed upgrade, it only sees 1006. A client that sent no
//     Origin is not a browser: it gets Nova's answer, the upgrade and then
//     the connection closed without a close frame (OpenStack tempest's
//     console test expects exactly that).
//
// The Origin is checked first, so a cross-origin page learns nothing about
// a token and its guesses do not count against the client's address; then
// the session core (pkg/sessions) checks the token (slowing down, never
// refusing, an address and token prefix with too many invalid tokens), the
// instance's cap and dials.
//
// Request heads and bodies are bounded by HandshakeTimeout (HTTPServer's
// ReadHeaderTimeout and ReadTimeout), cleared once a WebSocket is upgraded;
// a session then lives as long as its limits say. Connections are capped
// by the listener (package edge) per TCP peer; a client behind a trusted
// proxy is capped here, per forwarded address, for its upgrade. Sessions are run, limited, revoked, counted and logged by the core;
// this package keeps only the WebSocket edge: the upgrade, pings, and the
// close code and sentence of every way a console fails or ends. GET /metrics
// serves Options.MetricsHandler.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/edge"

	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/forwarded"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/origin"
)

// ConsoleType is the console type this proxy serves.
const ConsoleType = "novnc"

// Options are the Server's dependencies and limits.
type Options struct {
	// Core admits and runs sessions; its ConsoleType must be ConsoleType.
	Core   *sessions.Core
	Origin *origin.Policy
	Trust  forwarded.Trust
	// Web serves everything that is not an upgrade, /healthz nor /metrics.
	Web http.Handler
	Log *slog.Logger
	// MetricsHandler, when set, answers GET /metrics.
	MetricsHandler http.Handler
	// Caps, when set, caps the upgrades of each client behind a trusted
	// proxy (the listener caps direct clients).
	Caps *edge.Caps

	// HandshakeTimeout bounds reading a request (head and body), and the
	// token check and the dial of one upgrade.
	HandshakeTimeout time.Duration
	// PingInterval is how often the proxy pings the browser; 0 disables it.
	// A ping not answered within the interval ends the session.
	PingInterval time.Duration
	// RevocationGrace is how long a session whose VNC server closed first
	// waits for a revocation before it closes with 1000: a hypervisor closes
	// the VNC socket of a stopped VM before it reports the stop, and the
	// revocation carries the sentence the user should see. 0: no wait.
	RevocationGrace time.Duration
}

// Server is an http.Handler; see the package comment.
type Server struct {
	opts Options
	log  *slog.Logger
	core *sessions.Core
}

// New returns a Server. Options.Core, Origin and Web are required.
func New(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	return &Server{opts: opts, log: opts.Log, core: opts.Core}
}

// Drain turns readiness red: /healthz answers 503 and new upgrades are
// closed with 1012 (the page retries elsewhere). Live sessions go on.
func (s *Server) Drain() { s.core.Drain() }

// EndSessions ends every live session with 1012 "proxy shutting down".
func (s *Server) EndSessions() { s.core.EndAll() }

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

func (s *Server) serveHealth(w http.ResponseWriter) { s.core.WriteHealth(w) }

// HTTPServer is the http.Server of the public port: request heads and
// bodies within HandshakeTimeout (a body sent a byte at a time cannot hold
// a connection), page responses within a minute, idle keep-alive
// connections for two minutes, heads of at most 32 KiB. An upgrade clears
// the read and write deadlines of its connection.
func (s *Server) HTTPServer(errorLog *slog.Logger) *http.Server {
	if errorLog == nil {
		errorLog = s.log
	}
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.opts.HandshakeTimeout,
		ReadTimeout:       s.opts.HandshakeTimeout,
		WriteTimeout:      pageWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(errorLog.Handler(), slog.LevelDebug),
	}
}

const (
	// maxHeaderBytes caps a request head (Go adds 4 KiB of slack).
	maxHeaderBytes = 32 << 10
	// pageWriteTimeout bounds writing a page response; sessions clear it.
	pageWriteTimeout = time.Minute
)

// WriteOverCap answers a connection the listener refused for a cap (err is
// edge.ErrTooMany or edge.ErrTooManyFromClient) with a complete HTTP 503
// response and the JSON body of every refusal, once it has read the
// request head (HTTP clients take an answer before their request for a
// broken connection; one that sends nothing in time is closed unanswered);
// then it half-closes and reads what the client still sends for a moment,
// so the client sees the answer rather than a reset. c's deadline bounds it.
func WriteOverCap(c net.Conn, err error) {
	if !readHead(c, maxHeaderBytes) {
		return
	}
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
		Code  int    `json:"code"`
	}{err.Error(), http.StatusServiceUnavailable})
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"+
		"X-Content-Type-Options: nosniff\r\nRetry-After: 1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n", len(body)+1, body)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.CopyN(io.Discard, c, 64<<10)
}

// readHead reads up to the blank line that ends a request head, at most
// limit bytes; it reports whether it got there (or past limit).
func readHead(c net.Conn, limit int) bool {
	buf := make([]byte, 0, 1024)
	chunk := make([]byte, 1024)
	for len(buf) < limit {
		n, err := c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.Contains(buf, []byte("\r\n\r\n")) || bytes.Contains(buf, []byte("\n\n")) {
			return true
		}
		if err != nil {
			return false
		}
	}
	return true
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

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ip := s.opts.Trust.ClientIP(r)
	log := s.log.With("client", ip)
	release := func() {}
	if peer := forwarded.Peer(r); s.opts.Trust.Contains(peer) {
		// The listener could not tell this client from the proxy's others.
		client, _ := netip.ParseAddr(ip)
		var err error
		if release, err = s.opts.Caps.Client(client); err != nil {
			log.Debug("console refused", "reason", "max_connections_per_client", "error", err) // counted; a flood must not flood the log
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
	}
	running := false
	defer func() {
		if !running {
			release()
		}
	}()
	if err := checkUpgrade(r); err != nil {
		s.core.Refuse(log, &sessions.Refusal{Why: proxymetrics.RefusedBadRequest, Message: err.Error(), Err: err, Client: ip})
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.opts.Origin.Check(r.Header.Get("Origin"), s.opts.Trust.Scheme(r)); err != nil {
		s.core.Refuse(log, &sessions.Refusal{Why: proxymetrics.RefusedOriginRefused, Message: err.Error(), Err: err, Client: ip})
		writeError(w, http.StatusForbidden, err.Error())
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.opts.HandshakeTimeout)
	defer cancel()
	sess, ref := s.core.Admit(ctx, sessions.Attempt{Start: start, ClientIP: ip, Token: tokenOf(r), Log: log})
	if ref != nil {
		s.refuse(w, r, log, ref)
		return
	}
	ws, err := s.accept(w, r)
	if err != nil {
		sess.Abort(proxymetrics.RefusedClientGone, fmt.Errorf("upgrade failed: %w", err))
		return
	}
	cancel()
	// The session runs on a goroutine of its own and the handler returns:
	// net/http then lets go of what it keeps for a connection until then
	// (its buffered writers, the request), which an idle console would
	// hold for hours.
	running = true
	remote := r.RemoteAddr
	go func() {
		defer release()
		s.run(ws, sess, remote)
	}()
}

// run relays a session whose upgrade is done, until it ends.
func (s *Server) run(ws *websocket.Conn, sess *sessions.Session, remote string) {
	sess.Log = sess.Log.With("subprotocol", ws.Subprotocol())
	client := newWSConn(ws, remote, s.opts.RevocationGrace)
	client.onText = func() { sess.End(proxymetrics.EndProtocolError, "binary frames only") }
	stopPings := s.startPings(ws, sess)
	defer stopPings()
	ref := sess.Run(client, func(why proxymetrics.EndReason, message string) {
		if why == proxymetrics.EndPingTimeout { // nobody left to tell
			client.setClose(closecode.Normal, "")
			ws.CloseNow()
			return
		}
		client.setClose(endCode(why), closeReason(message))
	})
	if ref != nil { // the RFB handshake failed; the client was told in RFB too
		ws.Close(websocket.StatusCode(refusalCode(ref.Why)), closeReason(ref.Message))
	}
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

// refuse accepts the upgrade and closes it at once with the refusal's code
// and reason, so the page can tell the user why. A client that sent no
// Origin (not a browser: OpenStack tempest, scripts) gets Nova's answer
// instead, the upgrade and a close without a frame.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, log *slog.Logger, ref *sessions.Refusal) {
	ws, err := s.accept(w, r)
	if err != nil {
		log.Info("upgrade failed", "error", err)
		return
	}
	if r.Header.Get("Origin") == "" {
		ws.CloseNow()
		return
	}
	ws.Close(websocket.StatusCode(refusalCode(ref.Why)), closeReason(ref.Message))
}

// refusalCode is the close code of a refusal after the upgrade.
func refusalCode(why proxymetrics.Refusal) closecode.Code {
	switch why {
	case proxymetrics.RefusedTokenInvalid:
		return closecode.TokenInvalid
	case proxymetrics.RefusedWrongType:
		return closecode.WrongType
	case proxymetrics.RefusedConsoleMoved:
		return closecode.Moved
	case proxymetrics.RefusedTooManySessions:
		return closecode.Throttled
	case proxymetrics.RefusedVNCUnreachable:
		return closecode.Unreachable
	case proxymetrics.RefusedRevoked:
		return closecode.Revoked
	case proxymetrics.RefusedShutdown:
		return closecode.ShuttingDown
	case proxymetrics.RefusedVNCSecurity:
		return closecode.SecurityFailed
	case proxymetrics.RefusedNotVNC:
		return closecode.NotVNC
	case proxymetrics.RefusedClientGone:
		return closecode.Normal
	}
	return closecode.Unavailable
}

// EndCode and RefusalCode are the close codes a client gets when the proxy
// ends or refuses its session, for audit events (sessions.Config).
func EndCode(why proxymetrics.EndReason) int { return int(endCode(why)) }

// RefusalCode: see EndCode.
func RefusalCode(why proxymetrics.Refusal) int { return int(refusalCode(why)) }

// endCode is the close code of a session the proxy ended.
func endCode(why proxymetrics.EndReason) closecode.Code {
	switch why {
	case proxymetrics.EndShutdown:
		return closecode.ShuttingDown
	case proxymetrics.EndProtocolError:
		return closecode.TextFrame
	case proxymetrics.EndRevoked:
		return closecode.Revoked
	case proxymetrics.EndIdleTimeout:
		return closecode.IdleTimeout
	case proxymetrics.EndMaxLength:
		return closecode.SessionTooLong
	case proxymetrics.EndTokenExpired:
		return closecode.TokenExpired
	}
	return closecode.Normal
}

// startPings pings the browser every PingInterval, as a timer rather than a
// goroutine; a ping not answered within the interval ends the session. It
// returns a function that stops pinging.
func (s *Server) startPings(ws *websocket.Conn, sess *sessions.Session) (stop func()) {
	d := s.opts.PingInterval
	if d <= 0 {
		return func() {}
	}
	var (
		mu      sync.Mutex
		t       *time.Timer
		stopped bool
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(d, func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		err := ws.Ping(ctx)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case stopped:
		case err != nil:
			sess.Log.Info("client did not answer ping", "error", err)
			sess.End(proxymetrics.EndPingTimeout, "client did not answer ping")
		default:
			t.Reset(d)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}
