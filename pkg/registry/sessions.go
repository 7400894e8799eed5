package registry

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Live sessions and the proxies that hold them. Every proxy keeps one lease
// (kept alive while it runs) and writes under it:
//
//	/vncgate/proxies/{proxy}                       Proxy
//	/vncgate/sessions/{proxy}/{session}            LiveSession
//	/vncgate/instance-sessions/{uuid}/{slot}       "{proxy}/{session}": one of the instance's session slots
//
// so a proxy that dies takes its records with it. An instance's sessions are
// capped across every proxy by slots 0..max-1: a proxy admits a session only
// after creating a free slot key in a transaction (CreateRevision == 0), so
// N proxies never admit more than max between them.
//
// consoleauth (for vncgatectl) writes what a proxy must act on, which the
// proxy watches under its own name:
//
//	/vncgate/session-kills/{proxy}/{session}       SessionKill, on a short lease
//	/vncgate/proxy-drains/{proxy}                  ProxyDrain, on a lease outliving the deadline
const (
	ProxiesPrefix          = Root + "proxies/"
	SessionsPrefix         = Root + "sessions/"
	InstanceSessionsPrefix = Root + "instance-sessions/"
	SessionKillsPrefix     = Root + "session-kills/"
	ProxyDrainsPrefix      = Root + "proxy-drains/"
)

// proxyName is what a proxy name (and a session id) may be: a single etcd key
// segment, short enough to log.
var proxyName = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// CheckProxyName says why name cannot name a proxy (nil when it can).
func CheckProxyName(name string) error {
	if !proxyName.MatchString(name) {
		return fmt.Errorf("proxy name %.40q: want 1-128 of A-Z a-z 0-9 . _ : -", name)
	}
	return nil
}

// CheckSessionID says why id cannot be a session id (nil when it can).
func CheckSessionID(id string) error {
	if !proxyName.MatchString(id) {
		return fmt.Errorf("session id %.40q: want 1-128 of A-Z a-z 0-9 . _ : -", id)
	}
	return nil
}

// ProxyKey is where a proxy announces itself.
func ProxyKey(proxy string) string { return ProxiesPrefix + proxy }

// ProxySessionsPrefix holds one proxy's live sessions.
func ProxySessionsPrefix(proxy string) string { return SessionsPrefix + proxy + "/" }

// SessionKey is one live session of proxy.
func SessionKey(proxy, id string) string { return ProxySessionsPrefix(proxy) + id }

// InstanceSlotsPrefix holds an instance's session slots.
func InstanceSlotsPrefix(uuid string) string { return InstanceSessionsPrefix + uuid + "/" }

// InstanceSlotKey is slot n of an instance's sessions.
func InstanceSlotKey(uuid string, n int) string { return InstanceSlotsPrefix(uuid) + strconv.Itoa(n) }

// ProxyKillsPrefix holds the kills a proxy watches.
func ProxyKillsPrefix(proxy string) string { return SessionKillsPrefix + proxy + "/" }

// SessionKillKey asks proxy to end session id.
func SessionKillKey(proxy, id string) string { return ProxyKillsPrefix(proxy) + id }

// ProxyDrainKey asks proxy to drain.
func ProxyDrainKey(proxy string) string { return ProxyDrainsPrefix + proxy }

// Proxy is a running proxy's announcement (JSON).
type Proxy struct {
	Name string `json:"name"`
	// ConsoleType is "novnc" or "xvpvnc".
	ConsoleType string `json:"console_type"`
	// Address is the public listen address.
	Address string    `json:"address"`
	Started time.Time `json:"started"`
	// Draining is set once the proxy stopped taking new sessions.
	Draining      bool      `json:"draining,omitempty"`
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
}

// LiveSession is a live session's record (JSON). Never the token.
type LiveSession struct {
	ID              string    `json:"id"`
	InstanceUUID    string    `json:"instance_uuid"`
	Proxy           string    `json:"proxy"`
	ConsoleType     string    `json:"console_type"`
	Client          string    `json:"client"`
	ComputeHost     string    `json:"compute_host"`
	Started         time.Time `json:"started"`
	BytesToClient   int64     `json:"bytes_to_client"`
	BytesToServer   int64     `json:"bytes_to_server"`
	Updated         time.Time `json:"updated"`
	MintedBy        string    `json:"minted_by,omitempty"`
	TokenHashPrefix string    `json:"token_hash_prefix,omitempty"`
}

// SessionKill asks a proxy to end one session (JSON).
type SessionKill struct {
	// Reason is a RevocationReasons code; the user sees its sentence.
	Reason string `json:"reason"`
	// By is the operator's identity name, for the audit event.
	By string `json:"by"`
}

// ProxyDrain asks a proxy to drain (JSON).
type ProxyDrain struct {
	// Deadline is when the proxy ends its remaining sessions.
	Deadline time.Time `json:"deadline"`
	By       string    `json:"by"`
}
