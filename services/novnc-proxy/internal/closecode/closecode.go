// Package closecode is the one table of the ways a novnc-proxy console can
// fail or end: for each, the WebSocket close code and the sentence the
// console page shows. The page gets its sentences from this table (see
// Script), so the proxy and the page cannot disagree.
//
// Codes 4000-4999 are private-use close codes (RFC 6455 §7.4.2); each is 4000
// plus the HTTP status it resembles, so "4401" reads as "401 after the
// upgrade" (4406, wrong console type, because 4403 is the origin's; 4520 and
// 4525 borrow the 5xx codes proxies use for an origin that answers nonsense
// and for a failed TLS handshake with it). 1003 and 1012 are the standard
// codes for "unsupported data" and "service restart" (IANA's registry):
// on 1012 the console page reconnects by itself with the same token, which
// a load balancer sends to another replica.
package closecode

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Code is a WebSocket close code.
type Code int

// The codes, one per way a console fails or ends.
const (
	// Normal: the VNC server or the user ended the session.
	Normal Code = 1000
	// TextFrame: the client sent a text frame; the proxy relays binary only.
	TextFrame Code = 1003
	// ShuttingDown: the proxy is restarting: its drain deadline passed, or
	// it stopped taking new consoles. The page reconnects on it.
	ShuttingDown Code = 1012
	// TokenInvalid: the token is unknown, expired, revoked or missing.
	TokenInvalid Code = 4401
	// OriginRefused: the page that opened the WebSocket is not one of ours.
	// Only ever sent as HTTP 403 before the upgrade: a cross-origin page must
	// not get an open WebSocket. Listed so the page can name it.
	OriginRefused Code = 4403
	// WrongType: the token was minted for another console type (xvpvnc).
	WrongType Code = 4406
	// IdleTimeout: no byte moved either way for idle_timeout.
	IdleTimeout Code = 4408
	// Moved: the instance no longer listens where the token says.
	Moved Code = 4409
	// Revoked: an operator ended the session or the instance's tokens were
	// revoked (stopped, deleted, migrated); the reason says which.
	Revoked Code = 4410
	// SessionTooLong: the session reached max_session_length.
	SessionTooLong Code = 4413
	// TokenExpired: enforce_session_timeout ended the session when its token
	// expired.
	TokenExpired Code = 4419
	// Throttled: too many sessions on this instance (max_sessions_per_instance).
	// Failed tokens never refuse a console: they only slow its check down.
	Throttled Code = 4429
	// Unreachable: the VNC server could not be reached.
	Unreachable Code = 4502
	// Unavailable: consoleauth (or what it needs) could not answer.
	Unavailable Code = 4503
	// NotVNC: what listens at the VM's console address does not speak RFB.
	NotVNC Code = 4520
	// SecurityFailed: the proxy and the VM's VNC server agree on no
	// security type, or VeNCrypt (TLS) to the server failed (auth_schemes).
	SecurityFailed Code = 4525
)

// Entry describes one code.
type Entry struct {
	Code Code
	// Name is a short machine-friendly name, used in logs.
	Name string
	// Sentence is what the console page tells the user.
	Sentence string
}

// table is the single source of truth; keep it sorted by code.
var table = []Entry{
	{Normal, "closed", "The console session ended."},
	{TextFrame, "text_frame", "The console client sent data this proxy does not accept (text instead of binary frames)."},
	{ShuttingDown, "service_restart", "The console proxy is restarting. Reconnect in a moment."},
	{TokenInvalid, "token_invalid", "This console link is invalid or has expired. Request a new console from the dashboard or API."},
	{OriginRefused, "origin_refused", "This console was opened from a web site the console proxy does not trust (origin refused)."},
	{WrongType, "wrong_console_type", "This console link was made for another kind of console client, not the browser console."},
	{IdleTimeout, "idle_timeout", "The console was closed because it was idle for too long."},
	{Moved, "console_moved", "The server is no longer running where this console link points (it was stopped, moved or restarted). Request a new console."},
	{Revoked, "session_revoked", "The console session was ended by an operator."},
	{SessionTooLong, "session_too_long", "The console session reached its maximum length."},
	{TokenExpired, "token_expired", "The console link expired, which ends the session. Request a new console."},
	{Throttled, "throttled", "Too many console attempts. Wait a little and try again."},
	{Unreachable, "vm_unreachable", "The server's console could not be reached. The server may be shutting down or its host may be unreachable."},
	{Unavailable, "console_service_unavailable", "The console service is unavailable right now. Try again in a moment."},
	{NotVNC, "not_vnc", "The server's console is not answering as a VNC server. Ask your cloud operator."},
	{SecurityFailed, "vnc_security_failed", "The console proxy could not open a secure connection to the server's console. Ask your cloud operator."},
}

// All returns every entry, sorted by code.
func All() []Entry { return slices.Clone(table) }

// Lookup returns the entry of c.
func Lookup(c Code) (Entry, bool) {
	i, ok := slices.BinarySearchFunc(table, c, func(e Entry, c Code) int { return int(e.Code) - int(c) })
	if !ok {
		return Entry{}, false
	}
	return table[i], true
}

// String is the code's name.
func (c Code) String() string {
	if e, ok := Lookup(c); ok {
		return e.Name
	}
	return fmt.Sprintf("code_%d", int(c))
}

// Script is a JavaScript module exporting the table as
// `closeMessages` (code -> sentence), served to the console page.
func Script() []byte {
	m := make(map[int]string, len(table))
	for _, e := range table {
		m[int(e.Code)] = e.Sentence
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		panic(err) // a map[int]string always marshals
	}
	return fmt.Appendf(nil, "// Generated by novnc-proxy from its close code table (internal/closecode).\nexport const closeMessages = %s;\n", b)
}
