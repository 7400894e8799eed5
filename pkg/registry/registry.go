// Package registry is the etcd key layout of vncgate and the values stored
// under those keys: the one place every service agrees on.
//
//	/vncgate/tokens/{sha256(token) hex}              Token, on a shared TTL lease
//	/vncgate/instances/{uuid}/tokens/{hash}          "" index for revocation, same lease
//	/vncgate/computes/{host}                         Compute, on the agent's keep-alive lease
//	/vncgate/compute-instances/{host}/{uuid}         Location: host's claim that it runs uuid
//	/vncgate/revocations/{uuid}                      Revocation, on a short lease; proxies watch it
//
// The token itself is never stored: only its SHA-256. Instance UUIDs in keys
// are always in canonical form (ParseInstanceUUID).
//
// Who writes what (etcd roles, deploy/cmd/etcd-roles): consoleauth writes
// tokens/, instances/ and revocations/ and reads computes/ and
// compute-instances/; a compute agent writes only computes/{host} and
// compute-instances/{host}/ of its own host; the proxies only read
// revocations/. So a compute host can say where its own instances run but
// never move another host's: an instance's location is a claim under the
// claiming host's own prefix, not a key every agent may overwrite.
//
// Locating an instance: every key compute-instances/{host}/{uuid} is a claim
// that host runs uuid; the key's host is what counts (the value repeats it
// for people reading etcd). When several hosts claim one instance, the
// oldest claim wins: the lowest CreateRevision. During a live migration the
// source keeps its claim until it unpublishes the instance (after revoking
// its tokens), so consoles go to the source until then and to the
// destination after; and a host claiming someone else's instance gains
// nothing while the true owner's older claim stands. A token record is
// trusted only on a lease (Token); a record without one was not written by
// consoleauth and is refused.
package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Root is the prefix of every vncgate key.
const Root = "/vncgate/"

// Prefixes of key families, for Get/Watch WithPrefix.
const (
	TokensPrefix      = Root + "tokens/"
	InstancesPrefix   = Root + "instances/"
	ComputesPrefix    = Root + "computes/"
	RevocationsPrefix = Root + "revocations/"
	// ComputeInstancesRoot holds every host's ComputeInstancesPrefix.
	ComputeInstancesRoot = Root + "compute-instances/"
)

// TokenHash is the hex SHA-256 of a token: its key in etcd.
func TokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// HashPrefix is the short form of a token hash that logs may carry.
func HashPrefix(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

// TokenKey is where a token's record lives.
func TokenKey(hash string) string { return TokensPrefix + hash }

// InstanceTokensPrefix is the prefix of an instance's token index.
func InstanceTokensPrefix(uuid string) string { return InstancesPrefix + uuid + "/tokens/" }

// InstanceTokenKey indexes one token of an instance.
func InstanceTokenKey(uuid, hash string) string { return InstanceTokensPrefix(uuid) + hash }

// ComputeKey is where an agent registers itself.
func ComputeKey(host string) string { return ComputesPrefix + host }

// ComputeInstancesPrefix lists what one agent published: its claims.
func ComputeInstancesPrefix(host string) string { return ComputeInstancesRoot + host + "/" }

// ComputeInstanceKey is host's claim that it runs uuid; it holds a
// Location naming host.
func ComputeInstanceKey(host, uuid string) string { return ComputeInstancesPrefix(host) + uuid }

// ParseComputeInstanceKey splits a claim's key into its host and instance.
// It reports false for a key outside the layout: not under
// ComputeInstancesRoot, a host that is empty or holds a '/' (one host
// cannot pass for another by writing deeper under its own prefix), or an
// instance that is not a canonical UUID.
func ParseComputeInstanceKey(key string) (host, uuid string, ok bool) {
	rest, found := strings.CutPrefix(key, ComputeInstancesRoot)
	if !found {
		return "", "", false
	}
	host, uuid, found = strings.Cut(rest, "/")
	if !found || host == "" {
		return "", "", false
	}
	if canonical, err := ParseInstanceUUID(uuid); err != nil || canonical != uuid {
		return "", "", false
	}
	return host, uuid, true
}

// RevocationKey announces that an instance's tokens were revoked.
func RevocationKey(uuid string) string { return RevocationsPrefix + uuid }

// Token is the record of a minted token (JSON), under TokenKey on a lease:
// consoleauth always writes it so, and readers refuse a record without a
// lease (planted by some other etcd writer, or left from a broken write).
type Token struct {
	InstanceUUID       string    `json:"instance_uuid"`
	ConsoleType        string    `json:"console_type"`
	ComputeHost        string    `json:"compute_host"`
	Host               string    `json:"host"`
	Port               int32     `json:"port"`
	InternalAccessPath string    `json:"internal_access_path,omitempty"`
	CreatedAt          time.Time `json:"created_at"`
	ExpiresAt          time.Time `json:"expires_at"`
	// ViewOnly: the proxies drop the client's input (absent in records
	// written before view-only consoles existed: false).
	ViewOnly bool `json:"view_only,omitempty"`
	// MintedBy is the minting caller's identity name (authn.Identity.Name),
	// for audit events; never a credential.
	MintedBy string `json:"minted_by,omitempty"`
}

// Location is the value of a claim, ComputeInstanceKey(host, uuid) (JSON).
// Readers take the host from the key, which only that host's agent may
// write; the value repeats it for people reading etcd. A claim carries no
// lease: when the agent dies the instance still exists, and consoleauth
// answers "compute host down" (409) rather than "unknown instance" (404).
//
// The agent also publishes what it would answer ValidateConsolePort, so
// that consoleauth can answer a token check without asking it: Lease is the
// agent's registration lease when it wrote the value (the lease of
// ComputeKey(host)); Console is the instance's VNC server then, or nil with
// NoConsole saying why there is none (not running, gone, no VNC). The agent
// rewrites the value before it acts on any change (and before revoking the
// instance's tokens for it). A value without Lease (written before these
// fields, or while the hypervisor could not say) or with a Lease other than
// the live registration's vouches for nothing: consoleauth asks the agent.
type Location struct {
	ComputeHost string           `json:"compute_host"`
	Lease       int64            `json:"lease,omitempty"`
	Console     *LocationConsole `json:"console,omitempty"`
	NoConsole   string           `json:"no_console,omitempty"`
}

// LocationConsole is an instance's VNC server as proxies reach it: what the
// agent's GetConsole answers.
type LocationConsole struct {
	Host               string `json:"host"`
	Port               int32  `json:"port"`
	InternalAccessPath string `json:"internal_access_path,omitempty"`
}

// Mismatch says why host and port are not this console (the agent's
// ValidateConsolePort reason), or "" when they are: the same port, and the
// same host name without regard to case or the same IP address.
func (c LocationConsole) Mismatch(host string, port int32) string {
	switch {
	case c.Port != port:
		return fmt.Sprintf("port %d is not the instance's console (it is now %d)", port, c.Port)
	case !sameHost(c.Host, host):
		return fmt.Sprintf("host %q is not the instance's console (it is now %q)", host, c.Host)
	}
	return ""
}

func sameHost(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	ia, errA := netip.ParseAddr(a)
	ib, errB := netip.ParseAddr(b)
	return errA == nil && errB == nil && ia.Unmap() == ib.Unmap()
}

// Compute is an agent's registration (JSON).
type Compute struct {
	// Address is the agent's gRPC address, host:port.
	Address string `json:"address"`
}

// Revocation tells proxies to end an instance's open sessions (JSON). Sessions
// whose token was created at an etcd revision before the revocation's end;
// newer ones hold newer tokens. RevokedAt is kept for logs and for records
// read without a revision. consoleauth writes it after deleting the tokens,
// so a token that still checks as valid was created after it.
type Revocation struct {
	// Reason is the sentence users see: always one of RevocationReasons'.
	Reason    string    `json:"reason"`
	RevokedAt time.Time `json:"revoked_at"`
	// Revision is the etcd revision of the revocation's write, filled in
	// by the reader from the key's ModRevision (not stored in the value).
	Revision int64 `json:"-"`
}

// RevocationReasons are the codes a revocation may give and the sentence
// users then see. Callers choose a code, never the text: a console page
// must not show words an API caller wrote.
var RevocationReasons = map[string]string{
	"":          "the console was closed by the cloud",
	"revoked":   "the console was closed by the cloud",
	"stopped":   "the instance was stopped",
	"deleted":   "the instance was deleted",
	"rebooted":  "the instance was rebooted",
	"crashed":   "the instance crashed",
	"started":   "the instance was started",
	"migrated":  "the instance was migrated to another host",
	"console":   "the instance's console moved",
	"rebuilt":   "the instance was rebuilt",
	"suspended": "the instance was suspended",
	"paused":    "the instance was paused",
	"shelved":   "the instance was shelved",
	"admin":     "an administrator closed the console",
}

// DefaultRevocationReason is the code of a revocation that gives none.
const DefaultRevocationReason = "revoked"

// RevocationSentence returns the sentence of a revocation reason code ("" is
// DefaultRevocationReason) and whether the code is known.
func RevocationSentence(code string) (string, bool) {
	s, ok := RevocationReasons[code]
	return s, ok
}

// RevocationCodes lists the reason codes a revocation may give, sorted,
// without the empty one.
func RevocationCodes() []string {
	codes := make([]string, 0, len(RevocationReasons))
	for c := range RevocationReasons {
		if c != "" {
			codes = append(codes, c)
		}
	}
	slices.Sort(codes)
	return codes
}

// MaxInstanceUUIDLen is the length of a canonical instance UUID.
const MaxInstanceUUIDLen = 36

// ParseInstanceUUID checks that s is an instance UUID as Nova stores and
// returns it: 8-4-4-4-12 hexadecimal digits, in either case. It returns the
// canonical (lower-case) form, the only one keys hold. The other spellings
// Python's uuid.UUID (and so oslo's is_uuid_like) also takes — braces,
// "urn:uuid:", no dashes or dashes anywhere — are refused: Nova never hands
// them out, so no client has a reason to send them. The error never repeats
// s.
func ParseInstanceUUID(s string) (string, error) {
	if len(s) != MaxInstanceUUIDLen {
		return "", fmt.Errorf("want 36 characters (8-4-4-4-12 hexadecimal digits), not %d", len(s))
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", fmt.Errorf("want a dash at position %d (8-4-4-4-12 hexadecimal digits)", i+1)
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			b[i] = c + 'a' - 'A'
		default:
			return "", fmt.Errorf("want hexadecimal digits, not the character at position %d", i+1)
		}
	}
	return string(b), nil
}
