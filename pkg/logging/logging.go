// Package logging sets up the one logger of a vncgate service and names the
// keys every service uses, so one query finds the same thing in all four.
//
// Records are JSON lines on stderr by default (log_format = text gives
// slog's key=value text), at log_level (debug, info, warn, error; [DEFAULT]
// debug = true, oslo.log's option in nova.conf, means debug too). Every
// record carries "service".
//
// Keys, the same for the same thing in every service (constants Key*;
// Keys lists every key a record may carry, and a test keeps the services'
// log calls to it):
//
//	key            value
//	service        consoleauth, compute-agent, novnc-proxy, xvp-proxy (added by New)
//	error          an error's text (never "err")
//	instance       an instance UUID (never "uuid" nor "id")
//	token_hash     the first 12 hex digits of a token's SHA-256 (registry.HashPrefix);
//	               a token itself is never logged (never "token")
//	session        a console session's ID within its proxy
//	request_id     the request's id (package requestid): added by the handler
//	               from the context of a *Context call (log.InfoContext(ctx, …))
//	proxy          a proxy's name, as registered in etcd
//	client         a client's IP address, as the service believes it (trusted_proxies)
//	host           a compute host's name, as registered in etcd (never "compute_host")
//	method         a gRPC full method name, or an HTTP method and path
//	code           a gRPC code name (a WebSocket close code in audit events)
//	console_type   novnc or xvpvnc
//	vnc            a VNC server's address, host:port
//	addr           an address this service listens on
//	reason         why something ended or was refused: a fixed word (revoked, idle_timeout, …)
//	message        the sentence a user or operator is given with it (a revocation's text)
//	duration_ms    how long a call took, in milliseconds
//	caller, role   an authenticated caller's name and role
//	status         an HTTP status code
//	retry_in       the wait before the next attempt
//	attempt        the number of an attempt, from 1
//	sessions       a count of sessions
//	endpoints      etcd endpoints, or a callee's
//
// Every gRPC call a service serves is one "rpc" line (package grpcserver)
// with request_id, method, code and duration_ms.
//
// No record can be made huge by what a caller sent: the message, every
// string value, every error's text and every other value's rendering is cut
// to MaxValueLen bytes (at a character boundary), marked with how long it
// was, whatever the call site logs.
package logging

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/requestid"
)

// Options are the logging settings every service has.
type Options struct {
	// Level is [vncgate] log_level.
	Level slog.Level
	// Format is [vncgate] log_format: "json" or "text".
	Format string
	// Debug is [DEFAULT] debug (oslo.log's): log at debug level whatever
	// Level says.
	Debug bool
}

// Declare declares log_level, log_format and debug on s, into o.
func (o *Options) Declare(s *config.Set) {
	o.Level = slog.LevelInfo
	s.Var(levelValue{&o.Level}, config.SectionVNCGate, "log_level", "debug, info, warn or error")
	s.Choice(&o.Format, config.SectionVNCGate, "log_format", "json", []string{"json", "text"}, "log record format")
	s.Bool(&o.Debug, config.SectionDefault, "debug", false, "nova.conf's debug: log at debug level whatever log_level says")
}

// New returns the service's logger, writing to w.
func New(w io.Writer, service string, o Options) *slog.Logger {
	level := o.Level
	if o.Debug {
		level = min(level, slog.LevelDebug)
	}
	text := o.Format == "text"
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		return capAttr(a, text)
	}}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if text {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(requestIDHandler{h, false}).With(KeyService, service)
}

// requestIDHandler adds the request id of a record's context (package
// requestid) to the record, unless the call or the logger names one itself.
type requestIDHandler struct {
	slog.Handler
	has bool // With already added request_id
}

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := requestid.FromContext(ctx); id != "" && !h.has && !hasRequestID(r) {
		r = r.Clone()
		r.AddAttrs(slog.String(KeyRequestID, id))
	}
	return h.Handler.Handle(ctx, r)
}

func hasRequestID(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		found = a.Key == KeyRequestID
		return !found
	})
	return found
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	has := h.has
	for _, a := range attrs {
		has = has || a.Key == KeyRequestID
	}
	return requestIDHandler{h.Handler.WithAttrs(attrs), has}
}

// WithGroup: after it the id lands inside the group, like every attribute
// of the record.
func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name), h.has}
}

// MaxValueLen caps, in bytes, a record's message, each attribute's key and
// each attribute's value as it is written.
const MaxValueLen = 1024

// capAttr cuts a's key and value to MaxValueLen. Strings and errors are
// measured directly; other values (slices, structs) as the handler would
// render them, so only they pay for a second rendering.
func capAttr(a slog.Attr, text bool) slog.Attr {
	a.Key = Truncate(a.Key, MaxValueLen)
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); len(s) > MaxValueLen {
			a.Value = slog.StringValue(Truncate(s, MaxValueLen))
		}
	case slog.KindAny:
		v := a.Value.Any()
		if l, ok := v.(slog.Level); ok {
			// Every record's level: as a string, or the JSON handler would
			// json.Marshal it (reflection, on every line).
			return slog.String(a.Key, l.String())
		}
		if err, ok := v.(error); ok {
			if s := err.Error(); len(s) > MaxValueLen {
				a.Value = slog.StringValue(Truncate(s, MaxValueLen))
			}
			return a
		}
		var rendered string
		if text {
			rendered = fmt.Sprintf("%+v", v)
		} else if b, err := json.Marshal(v); err == nil {
			rendered = string(b)
		}
		if len(rendered) > MaxValueLen {
			a.Value = slog.StringValue(Truncate(rendered, MaxValueLen))
		}
	}
	return a
}

// Truncate returns s when it has at most n bytes, else its first n bytes or
// fewer (never splitting a UTF-8 sequence) followed by a mark saying how long
// s was.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…[truncated, " + strconv.Itoa(len(s)) + " bytes]"
}

type levelValue struct{ p *slog.Level }

func (v levelValue) String() string {
	if v.p == nil {
		return "info"
	}
	return strings.ToLower(v.p.String())
}

func (v levelValue) Set(s string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return fmt.Errorf("want debug, info, warn or error, got %q", s)
	}
	*v.p = l
	return nil
}
