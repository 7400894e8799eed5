// Package registry is the etcd key layout of vncgate and the values stored
// under those keys: the one place every service agrees on.
//
//	/vncgate/tokens/{sha256(token) hex}              Token, on a shared TTL lease
//	/vncgate/instances/{uuid}/tokens/{hash}          "" index for revocation, same lease
//	/vncgate/instances/{uuid}/location               Location, written by its agent
//	/vncgate/computes/{host}                         Compute, on the agent's keep-alive lease
//	/vncgate/compute-instances/{host}/{uuid}         "" what an agent published, to prune on restart
//	/vncgate/revocations/{uuid}                      Revocation, on a short lease; proxies watch it
//
// The token itself is never stored: only its SHA-256.
package registry

import (
	"crypto/sha256"
	"encoding/hex"
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

// LocationKey is where an instance's agent says where it runs.
func LocationKey(uuid string) string { return InstancesPrefix + uuid + "/location" }

// ComputeKey is where an agent registers itself.
func ComputeKey(host string) string { return ComputesPrefix + host }

// ComputeInstancesPrefix lists what one agent published.
func ComputeInstancesPrefix(host string) string { return Root + "compute-instances/" + host + "/" }

// ComputeInstanceKey marks one instance as published by host.
func ComputeInstanceKey(host, uuid string) string { return ComputeInstancesPrefix(host) + uuid }

// RevocationKey announces that an instance's tokens were revoked.
func RevocationKey(uuid string) string { return RevocationsPrefix + uuid }

// Token is the record of a minted token (JSON).
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
}

// Location says which compute host runs an instance (JSON). It carries no
// lease: when the agent dies the instance still exists, and consoleauth
// answers "compute host down" (409) rather than "unknown instance" (404).
type Location struct {
	ComputeHost string `json:"compute_host"`
}

// Compute is an agent's registration (JSON).
type Compute struct {
	// Address is the agent's gRPC address, host:port.
	Address string `json:"address"`
}

// Revocation tells proxies to end an instance's open sessions (JSON). Sessions
// whose token was created at an etcd revision before the revocation's end;
// newer ones hold newer tokens. RevokedAt is kept for logs and for records
// read without a revision.
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
