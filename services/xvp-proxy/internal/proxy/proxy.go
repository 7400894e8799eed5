// Package proxy is xvp-proxy's server: it reads one XVP request head from a
// Java VNC viewer, checks the token with consoleauth, dials the VNC server
// the token names, answers "HTTP/1.1 200 OK\r\n\r\n" and relays raw RFB.
//
// It promises:
//   - every step that can fail (head, token, session cap, dial)
//     runs before the 200, and each failure gets its own status line (see
//     replies.go) and one log line;
//   - the whole handshake, from accept to the 200, is bounded by
//     Config.HandshakeTimeout and reads at most 4 KiB (writing the 200
//     of a session whose steps all ended in time may take up to
//     lingerTimeout more); the deadline is cleared once the 200 is sent;
//   - bytes the client pipelined after its head reach the VNC server first;
//   - the token is never logged: log lines carry a prefix of its SHA-256
//     and the client IP, never the request line;
//   - sessions end on a revocation of their instance, idle timeout, maximum
//     length, or shutdown (pkg/sessions, the session core both proxies
//     share); raw RFB has no way to tell the client why, so the proxy closes
//     the TCP connection and logs the reason;
//   - every accepted connection is counted once by the core: as relayed, or
//     under the reason it was refused; a relayed session's end is counted
//     with its reason and bytes. (Connections over a cap are counted by
//     the listener, package edge; HAProxy's health checks are not counted.)
//
// Behind a load balancer: a connection from one of Config.Trusted (the
// operator's trusted_proxies) must begin with a PROXY protocol v1 or v2
// header (HAProxy's send-proxy or send-proxy-v2), read with
// github.com/pires/go-proxyproto under the handshake deadline, before TLS.
// The client address it carries is the one in logs, the failed-token limit
// and the per-client cap (Config.Caps). A LOCAL header (HAProxy's health
// checks) is closed without a word. Connections from other addresses are
// served as direct clients: a PROXY header from them is not parsed, so it
// is a malformed request (400), and nobody else can claim an address.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/sessions"
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
	// Core admits and runs sessions; its ConsoleType must be ConsoleType.
	Core *sessions.Core
	Log  *slog.Logger

	// HandshakeTimeout bounds reading the head, the token check, the dial
	// and the answer.
	HandshakeTimeout time.Duration
	// DrainTimeout is how long Serve waits for live sessions after its
	// context ends before it closes them.
	DrainTimeout time.Duration

	// TLS, when set, is the listener's TLS, run by the proxy after a PROXY
	// header (so the listener must hand over raw connections).
	TLS *tls.Config
	// Trusted are the load balancers that send a PROXY protocol header.
	Trusted edge.Trust
	// Caps caps the clients behind Trusted (the listener caps the others);
	// nil: no cap.
	Caps *edge.Caps
}

// Server serves XVP clients. Create it with New.
type Server struct {
	cfg  Config
	log  *slog.Logger
	core *sessions.Core
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
	return &Server{cfg: cfg, log: cfg.Log, core: cfg.Core}
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
		s.core.Drain()
		l.Close()
	})
	defer stopAccepting()

	var wg sync.WaitGroup
	var serveErr error
	for {
		// The listener (package edge) retries failed accepts itself: an
		// error means it was closed.
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil {
				serveErr = err
			}
			break
		}
		wg.Go(func() {
			stop := context.AfterFunc(hard, func() { conn.Close() })
			defer stop()
			s.handle(hard, conn)
		})
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	s.log.Info("draining", "sessions", s.core.Len(), "drain_timeout", s.cfg.DrainTimeout.String())
	select {
	case <-done:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn("drain timeout: closing live sessions", "sessions", s.core.Len())
		s.core.EndAll()
		hardCancel()
		<-done
	}
	return serveErr
}

// ServeHealth answers a health check: 200 {"status": "ok", "sessions": N}
// while the proxy accepts clients, 503 with "draining" once it stopped.
func (s *Server) ServeHealth(w http.ResponseWriter, _ *http.Request) { s.core.WriteHealth(w) }

// handle serves one client connection from accept to close.
func (s *Server) handle(ctx context.Context, raw net.Conn) {
	start := time.Now()
	deadline := start.Add(s.cfg.HandshakeTimeout)
	raw.SetDeadline(deadline)
	conn, client, err := s.open(raw)
	if err != nil {
		if !errors.Is(err, errHealthCheck) {
			s.core.Refuse(s.log.With("client", clientIP(raw)), &sessions.Refusal{Why: proxymetrics.RefusedClientGone, Message: "no session", Err: err, Client: clientIP(raw)})
		}
		raw.Close()
		return
	}
	ip := client.String()
	log := s.log.With("client", ip)
	if s.cfg.Trusted.Contains(edge.AddrOf(raw.RemoteAddr())) {
		// The listener counted the load balancer; this is its client.
		release, err := s.cfg.Caps.Client(client)
		if err != nil {
			log.Debug("connection refused", "reason", "max_connections_per_client", "error", err) // counted; a flood must not flood the log
			refuse(conn, replyTooManyFrom)
			return
		}
		defer release()
	}

	head, rest, err := xvphead.Read(conn)
	if err != nil {
		s.refuseHead(conn, log, ip, err)
		return
	}
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	sess, ref := s.core.Admit(hctx, sessions.Attempt{Start: start, ClientIP: ip, Token: head.Token, Log: log})
	if ref != nil {
		if ref.Why != proxymetrics.RefusedShutdown || ctx.Err() == nil {
			refuse(conn, replyTo(ref))
		}
		return
	}
	server := sess.Server()
	server.SetDeadline(deadline)
	relayed := drained(conn)
	switch {
	case len(rest) > 0 && sess.RFBAware():
		// The proxy speaks RFB with the client first: what it sent ahead
		// is its side of that handshake (never the VM's, or a view-only
		// client could type).
		relayed = &prefixedConn{Conn: relayed, prefix: rest}
	case len(rest) > 0:
		if _, err := server.Write(rest); err != nil {
			sess.Abort(proxymetrics.RefusedVNCUnreachable, fmt.Errorf("writing pipelined bytes to the vnc server: %w", err))
			refuse(conn, replyBadGateway)
			return
		}
	}
	// Every step ended within the handshake's deadline, but on a loaded
	// host (a reconnect storm) the deadline may pass before this write
	// runs: the console is ready, so the 200 gets a moment of its own
	// rather than the client a connection closed without a word.
	conn.SetWriteDeadline(time.Now().Add(lingerTimeout))
	if _, err := conn.Write(replyOK); err != nil {
		sess.Abort(proxymetrics.RefusedClientGone, fmt.Errorf("client gone before the 200: %w", err))
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{})
	server.SetDeadline(time.Time{})
	sess.Log = sess.Log.With("method", head.Method)
	if sess.Run(drained(relayed), nil) != nil { // the RFB handshake failed; the client was told in RFB
		conn.Close()
	}
}

// errHealthCheck is a load balancer's health check (a PROXY LOCAL header).
var errHealthCheck = errors.New("health check")

// open reads a trusted load balancer's PROXY header and runs the TLS
// handshake, under raw's deadline. It returns the connection to read the
// XVP head from and the client's address.
func (s *Server) open(raw net.Conn) (net.Conn, netip.Addr, error) {
	conn, client := raw, edge.AddrOf(raw.RemoteAddr())
	if s.cfg.Trusted.Contains(client) {
		br := bufio.NewReaderSize(raw, proxyHeaderBuffer)
		h, err := proxyproto.Read(br)
		if err != nil {
			return nil, client, fmt.Errorf("PROXY protocol header from trusted proxy %s: %w", client, err)
		}
		if h.Command.IsLocal() {
			s.log.Debug("health check", "proxy", client.String())
			return nil, client, errHealthCheck
		}
		src, ok := h.SourceAddr.(*net.TCPAddr)
		if !ok {
			return nil, client, fmt.Errorf("PROXY protocol header from trusted proxy %s: no TCP source address", client)
		}
		client = src.AddrPort().Addr().Unmap()
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			conn = &prefixedConn{Conn: raw, prefix: bytes.Clone(b)}
		}
	}
	if s.cfg.TLS != nil {
		tc := tls.Server(conn, s.cfg.TLS)
		if err := tc.Handshake(); err != nil {
			return nil, client, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	return conn, client, nil
}

// proxyHeaderBuffer holds a PROXY v1 line (at most 107 bytes) or a v2
// header with a few TLVs; longer v2 headers are read in several parts.
const proxyHeaderBuffer = 256

// RefuseOverCap answers a connection the listener refused for a cap (err
// is edge.ErrTooMany or edge.ErrTooManyFromClient): after the PROXY header,
// TLS and the request head, as for any client, with a 503. A health check,
// or a client that sends nothing in time (raw's deadline), is just closed.
func (s *Server) RefuseOverCap(raw net.Conn, err error) {
	conn, client, oerr := s.open(raw)
	if oerr != nil {
		return
	}
	if _, _, herr := xvphead.Read(conn); errors.Is(herr, xvphead.ErrEmpty) || errors.Is(herr, os.ErrDeadlineExceeded) {
		return
	}
	s.log.Debug("connection refused", "client", client.String(), "error", err) // counted by the listener
	reply := replyTooManyConns
	if errors.Is(err, edge.ErrTooManyFromClient) {
		reply = replyTooManyFrom
	}
	refuse(conn, reply)
}

// drained is c without the prefixedConn around it once its prefix is
// read, so the relay reads the connection itself (and an idle session
// holds no copy buffer).
func drained(c net.Conn) net.Conn {
	if pc, ok := c.(*prefixedConn); ok && len(pc.prefix) == 0 {
		return pc.Conn
	}
	return c
}

// prefixedConn reads prefix before the connection's own bytes.
type prefixedConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixedConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite and CloseRead keep the relay's half-close where the
// connection has it (TCP; TLS has no CloseRead: the relay then closes).
func (c *prefixedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *prefixedConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.ErrUnsupported
}

// RefusalStatus is the HTTP status a client gets when the proxy refuses
// it, for audit events (sessions.Config); 0 when it gets none.
func RefusalStatus(why proxymetrics.Refusal) int {
	switch why { // refused before Admit: refuseHead's answers
	case proxymetrics.RefusedBadRequest:
		return http.StatusBadRequest
	case proxymetrics.RefusedHandshakeTimeout:
		return http.StatusRequestTimeout
	case proxymetrics.RefusedClientGone:
		return 0 // nobody left to answer
	}
	var status int
	fmt.Sscanf(string(replyTo(&sessions.Refusal{Why: why})), "HTTP/1.1 %d", &status)
	return status
}

// replyTo is the status line of a refusal after the head was read.
func replyTo(r *sessions.Refusal) []byte {
	switch r.Why {
	case proxymetrics.RefusedTokenInvalid, proxymetrics.RefusedWrongType, proxymetrics.RefusedRevoked:
		return replyInvalidToken
	case proxymetrics.RefusedConsoleMoved:
		return replyMoved
	case proxymetrics.RefusedTooManySessions:
		return replyTooMany
	case proxymetrics.RefusedVNCUnreachable:
		return replyBadGateway
	case proxymetrics.RefusedShutdown:
		return replyShuttingDown
	}
	return replyUnavailable
}

// refuseHead answers and counts a head that could not be read or parsed.
func (s *Server) refuseHead(conn net.Conn, log *slog.Logger, ip string, err error) {
	var reply []byte
	why := proxymetrics.RefusedBadRequest
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded): // silent or slow client
		reply, why = replyTimeout, proxymetrics.RefusedHandshakeTimeout
	case errors.Is(err, xvphead.ErrEmpty): // a port probe
		why = proxymetrics.RefusedClientGone
	case errors.Is(err, xvphead.ErrIncomplete) && !errors.Is(err, io.EOF): // cut mid-request
		why = proxymetrics.RefusedClientGone
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
	s.core.Refuse(log, &sessions.Refusal{Why: why, Message: "bad request", Err: err, Client: ip})
	if reply == nil {
		conn.Close()
		return
	}
	refuse(conn, reply)
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

func clientIP(conn net.Conn) string {
	host, _, err := net.SplitHostPort(conn.RemoteAddr().String())
	if err != nil {
		return conn.RemoteAddr().String()
	}
	return host
}
