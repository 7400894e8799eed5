// Package audit writes the console proxies' audit events: one event per
// session end and one per refused attempt, with the same schema from
// novnc-proxy and xvp-proxy, for a SIEM to ingest. Every event goes to the
// service's JSON log (message "audit", attribute audit=true) and, when
// configured, as one JSON line to a file ([vncgate] audit_file) and to
// syslog ([vncgate] audit_syslog). An event never holds a token: at most
// the first characters of its SHA-256 hash (token_hash).
//
// The fields, in the JSON line and the log line alike:
//
//	event              "session_end" or "refusal"
//	time               when the event was written (RFC 3339, UTC)
//	session            the session id, born at admission ("" for a refusal before the token check)
//	request_id         the request id sent to consoleauth with the token check ("x-request-id")
//	instance           the instance UUID ("" when the token was never checked)
//	console_type       "novnc" or "xvpvnc"
//	proxy              the proxy's name ([vncgate] proxy_name)
//	client             the client's address (behind trusted_proxies, the forwarded one)
//	minted_by          who minted the token (consoleauth's caller identity), "" when unknown
//	token_hash         a prefix of the token's SHA-256 hash, "" without a token
//	started            when the client's attempt began (connection, or WebSocket upgrade request)
//	duration_seconds   from started to the event
//	bytes_to_client    bytes relayed from the VNC server to the client (0 for a refusal)
//	bytes_to_server    bytes relayed from the client to the VNC server (0 for a refusal)
//	reason             why: a vncgate_proxy_session_ended_total reason (session_end) or a
//	                   vncgate_proxy_sessions_total result (refusal), e.g. "client_closed", "token_invalid"
//	ended_by           who ended the session: "client", "server" or "proxy" ("" for a refusal)
//	message            the sentence the user was shown, if any
//	code               the protocol's code the client got: novnc-proxy's WebSocket close code,
//	                   xvp-proxy's HTTP status for a refusal; 0 when the client got none
//
// Writes to the file and syslog are asynchronous and never block a
// session: events queue (up to QueueSize) for one writer goroutine, and
// when the queue is full (a syslog server that stopped reading) events are
// dropped from those outputs (never from the log) with one warning per
// episode. Reopen reopens the file (logrotate's postrotate, via SIGHUP).
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Event kinds.
const (
	SessionEnd = "session_end"
	Refusal    = "refusal"
)

// Event is one audit event; see the package comment for each field.
type Event struct {
	Event           string    `json:"event"`
	Time            time.Time `json:"time"`
	Session         string    `json:"session"`
	RequestID       string    `json:"request_id"`
	Instance        string    `json:"instance"`
	ConsoleType     string    `json:"console_type"`
	Proxy           string    `json:"proxy"`
	Client          string    `json:"client"`
	MintedBy        string    `json:"minted_by"`
	TokenHash       string    `json:"token_hash"`
	Started         time.Time `json:"started"`
	DurationSeconds float64   `json:"duration_seconds"`
	BytesToClient   int64     `json:"bytes_to_client"`
	BytesToServer   int64     `json:"bytes_to_server"`
	Reason          string    `json:"reason"`
	EndedBy         string    `json:"ended_by"`
	Message         string    `json:"message"`
	Code            int       `json:"code"`
}

// attrs is e as log attributes, keyed as in the JSON line.
func (e *Event) attrs() []slog.Attr {
	return []slog.Attr{
		slog.Bool("audit", true),
		slog.String("event", e.Event),
		slog.String("session", e.Session),
		slog.String("request_id", e.RequestID),
		slog.String("instance", e.Instance),
		slog.String("console_type", e.ConsoleType),
		slog.String("proxy", e.Proxy),
		slog.String("client", e.Client),
		slog.String("minted_by", e.MintedBy),
		slog.String("token_hash", e.TokenHash),
		slog.Time("started", e.Started),
		slog.Float64("duration_seconds", e.DurationSeconds),
		slog.Int64("bytes_to_client", e.BytesToClient),
		slog.Int64("bytes_to_server", e.BytesToServer),
		slog.String("reason", e.Reason),
		slog.String("ended_by", e.EndedBy),
		slog.String("message", e.Message),
		slog.Int("code", e.Code),
	}
}

// closeTimeout bounds Close's wait for the queued events.
const closeTimeout = 5 * time.Second

// QueueSize bounds the events waiting for the file and syslog.
const QueueSize = 4096

// maxField bounds a string field (messages hold error text): a line stays
// well under syslog's and a SIEM's limits.
const maxField = 512

// Options say where events go besides the log.
type Options struct {
	// File, if not empty, gets one JSON line per event (created 0640,
	// appended to).
	File string
	// Syslog, if not empty, is "local" (the host's syslog socket) or
	// [udp://|tcp://]host:port (UDP without a scheme); each event is one
	// message, facility auth, severity info, the JSON line as its text.
	Syslog string
	// Tag is the syslog tag: the service's name.
	Tag string
	// Log gets every event (required; nil discards).
	Log *slog.Logger
}

// CheckSyslog says why addr cannot be an audit_syslog value (nil when it can).
func CheckSyslog(addr string) error {
	_, _, err := parseSyslog(addr)
	return err
}

func parseSyslog(addr string) (network, raddr string, err error) {
	if addr == "local" {
		return "", "", nil
	}
	network, raddr = "udp", addr
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		network, raddr = scheme, rest
	}
	if network != "udp" && network != "tcp" {
		return "", "", fmt.Errorf("audit_syslog %.60q: want local, host:port, udp://host:port or tcp://host:port", addr)
	}
	if _, _, err := net.SplitHostPort(raddr); err != nil {
		return "", "", fmt.Errorf("audit_syslog %.60q: want local, host:port, udp://host:port or tcp://host:port: %w", addr, err)
	}
	return network, raddr, nil
}

// Logger writes audit events; safe for concurrent use. The zero value and
// nil discard events.
type Logger struct {
	log  *slog.Logger
	path string

	fileMu sync.Mutex
	file   *os.File
	syslog io.WriteCloser

	queueMu  sync.RWMutex // Close holds it to close queue; Write to send
	queue    chan []byte
	closed   bool
	done     chan struct{}
	closing  sync.Once
	dropping atomic.Bool
}

// New returns a Logger of events to log only.
func New(log *slog.Logger) *Logger {
	l, _ := Open(Options{Log: log})
	return l
}

// Open returns a Logger writing to opts' outputs. It fails when the file
// cannot be opened or the syslog address is malformed or unreachable
// (a UDP or local one is reachable once its socket opens).
func Open(opts Options) (*Logger, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	l := &Logger{log: opts.Log, path: opts.File}
	if opts.File != "" {
		f, err := openFile(opts.File)
		if err != nil {
			return nil, err
		}
		l.file = f
	}
	if opts.Syslog != "" {
		network, raddr, err := parseSyslog(opts.Syslog)
		if err != nil {
			l.closeFile()
			return nil, err
		}
		tag := opts.Tag
		if tag == "" {
			tag = "vncgate"
		}
		w, err := syslog.Dial(network, raddr, syslog.LOG_AUTH|syslog.LOG_INFO, tag)
		if err != nil {
			l.closeFile()
			return nil, fmt.Errorf("audit_syslog %s: %w", opts.Syslog, err)
		}
		l.syslog = w
	}
	if l.file != nil || l.syslog != nil {
		l.queue = make(chan []byte, QueueSize)
		l.done = make(chan struct{})
		go l.write()
	}
	return l, nil
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit_file: %w", err)
	}
	return f, nil
}

// Write records e, stamping its time if unset. It never blocks on the
// file or syslog.
func (l *Logger) Write(e Event) {
	if l == nil || l.log == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	e.Started = e.Started.UTC()
	e.Message = bound(e.Message)
	e.Client = bound(e.Client)
	e.MintedBy = bound(e.MintedBy)
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "audit", e.attrs()...)
	if l.queue == nil {
		return
	}
	line, err := json.Marshal(&e)
	if err != nil { // cannot happen: strings, numbers and times
		return
	}
	l.queueMu.RLock()
	defer l.queueMu.RUnlock()
	if l.closed {
		return
	}
	select {
	case l.queue <- append(line, '\n'):
		if l.dropping.CompareAndSwap(true, false) {
			l.log.Info("audit outputs keep up again")
		}
	default:
		if l.dropping.CompareAndSwap(false, true) {
			l.log.Warn("audit queue full: dropping events for audit_file and audit_syslog (they stay in this log)", "queue", QueueSize)
		}
	}
}

func bound(s string) string {
	if len(s) > maxField {
		return s[:maxField]
	}
	return s
}

// write drains the queue into the file and syslog.
func (l *Logger) write() {
	defer close(l.done)
	var fileFailed, syslogFailed bool
	for line := range l.queue {
		l.fileMu.Lock()
		if l.file != nil {
			_, err := l.file.Write(line) // one write per line: O_APPEND keeps lines whole
			if failed := err != nil; failed != fileFailed {
				fileFailed = failed
				if failed {
					l.log.Error("audit_file write failed", "path", l.path, "error", err)
				} else {
					l.log.Info("audit_file writes again", "path", l.path)
				}
			}
		}
		l.fileMu.Unlock()
		if l.syslog != nil {
			_, err := l.syslog.Write(line[:len(line)-1])
			if failed := err != nil; failed != syslogFailed {
				syslogFailed = failed
				if failed {
					l.log.Error("audit_syslog write failed", "error", err)
				} else {
					l.log.Info("audit_syslog writes again")
				}
			}
		}
	}
}

// Reopen reopens the audit file at its path, after logrotate moved it.
func (l *Logger) Reopen() error {
	if l == nil || l.path == "" {
		return nil
	}
	f, err := openFile(l.path)
	if err != nil {
		return err
	}
	l.fileMu.Lock()
	old := l.file
	l.file = f
	l.fileMu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// ReopenOnSIGHUP reopens the file on every SIGHUP until the returned stop
// is called. It takes SIGHUP even without a file, so a reload
// (systemd's ExecReload) never kills the process.
func (l *Logger) ReopenOnSIGHUP() (stop func()) {
	if l == nil {
		return func() {}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				if l.path == "" {
					l.log.Info("SIGHUP: nothing to reopen (no audit_file)")
					continue
				}
				if err := l.Reopen(); err != nil {
					l.log.Error("audit_file reopen failed", "path", l.path, "error", err)
				} else {
					l.log.Info("audit_file reopened", "path", l.path)
				}
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

// Close writes what is queued (waiting at most closeTimeout) and closes
// the outputs; later events go to the log only.
func (l *Logger) Close() error {
	if l == nil || l.queue == nil {
		return nil
	}
	var err error
	l.closing.Do(func() {
		l.queueMu.Lock()
		l.closed = true
		close(l.queue)
		l.queueMu.Unlock()
		select {
		case <-l.done:
		case <-time.After(closeTimeout):
			// A syslog server that stopped reading holds the writer (and
			// log/syslog's lock): leave it rather than hang the shutdown.
			l.log.Warn("audit outputs did not take the queued events in time; dropping them", "timeout", closeTimeout.String())
			return
		}
		if l.syslog != nil {
			err = l.syslog.Close()
		}
		err = errors.Join(err, l.closeFile())
	})
	return err
}

func (l *Logger) closeFile() error {
	l.fileMu.Lock()
	defer l.fileMu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}
