// Package tokenstore is consoleauth's state in etcd: console tokens and the
// instance registry it reads to find an instance's compute agent.
//
// A token is 32 bytes from crypto/rand, base64url without padding. Only its
// SHA-256 is stored: registry.TokenKey(hash) holds the JSON registry.Token
// and registry.InstanceTokenKey(uuid, hash) indexes it for revocation; both
// are written in one transaction and bound to one lease. Leases are shared:
// tokens minted in the same time bucket reuse one lease, whose TTL is the
// token TTL plus the bucket width so it always outlives its tokens. Expiry is
// also checked on every read (Token.ExpiresAt), so a token is refused as soon
// as it expires, whatever its lease. A view-only token's record says so
// (Token.ViewOnly); a normal token's record omits the field, so records and
// readers from before view-only consoles agree.
//
// A record is trusted only as consoleauth writes it: under the token's own
// key and on a lease. Any other etcd writer could plant a record; one
// without a lease is treated as not found (and logged once, by hash
// prefix). Tokens have one shape (TokenLen base64url characters): anything
// else is refused before it is hashed or sent to etcd.
//
// Revocations carry a reason code (registry.RevocationReasons); the record
// stores the code's sentence, never caller text, and is written after the
// tokens are deleted, so its etcd revision orders it after every token it
// ended (registry.Revocation).
//
// Every etcd call runs under a timeout, and under a health probe
// (health.go): a linearizable read every ProbeInterval, so that etcd
// without a quorum (reachable, but answering nothing) is found within
// ProbeInterval + ProbeTimeout, and most members down (refusing
// connections) within ProbeTimeout/10 of a probe, which a failed call
// starts at once. From then every call, in flight or new,
// fails at once with an error wrapping ErrStoreUnavailable, instead of each
// waiting for its timeout; the outage is logged once, and its end once.
// Token records kept in memory (tokencache.go) are used only while etcd is
// healthy and the watch that keeps them is current, so the store serves
// again with the first probe etcd answers, and not before. A leader election is not an outage: while most members
// answer, calls wait for the new leader (up to ElectionGrace), and writes
// sent to the leader that died are sent again once the new one is known.
//
// Instance locations are indexed in memory from a watch (locate.go): a
// claim in which the instance's agent published its console under its
// live registration is answered from memory (Locate, Agent.Vouched), and
// every other answer is confirmed against etcd (LocateFresh).
package tokenstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors of the store, wrapped with %w; consoleauth's RPC edge maps them to
// gRPC codes.
var (
	// ErrNotFound: the token is unknown, expired, revoked or already used.
	ErrNotFound = errors.New("console token not found: unknown, expired, revoked or already used")
	// ErrStoreUnavailable: etcd did not answer in time.
	ErrStoreUnavailable = errors.New("token store (etcd) unavailable")
	// ErrMalformedToken: the string cannot be a token of this service.
	ErrMalformedToken = fmt.Errorf("not a console token: want %d base64url characters", TokenLen)
	// ErrUnknownReason: a revocation reason that is not a code of
	// registry.RevocationReasons.
	ErrUnknownReason = errors.New("unknown revocation reason")
)

// TokenLen is the length of every token: 32 random bytes in unpadded
// base64url.
const TokenLen = 43

// CheckToken reports whether token has the shape of a token this service
// mints, without looking it up: ErrMalformedToken otherwise.
func CheckToken(token string) error {
	if len(token) != TokenLen {
		return ErrMalformedToken
	}
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return ErrMalformedToken
		}
	}
	return nil
}

// Defaults of Options.
const (
	DefaultTTL           = 600 * time.Second
	DefaultTimeout       = 5 * time.Second
	DefaultRevocationTTL = 60 * time.Second
)

// maxResend bounds how often a write cut by a leader election is sent
// again.
const maxResend = 2

// maxTxnOps is etcd's default limit of operations in one transaction
// (--max-txn-ops=128). Revoke splits larger revocations into batches of this
// size: each batch is atomic, the revocation as a whole is not.
const maxTxnOps = 128

// Options configures a Store. Zero fields take the defaults.
type Options struct {
	// TTL is how long a token is valid; at least one second.
	TTL time.Duration
	// Timeout bounds every etcd call.
	Timeout time.Duration
	// RevocationTTL is how long a revocation announcement stays in etcd for
	// proxies to see.
	RevocationTTL time.Duration
	// ProbeInterval is how often etcd's health is probed, ProbeTimeout how
	// long a probe may wait for its answer (see health.go).
	ProbeInterval, ProbeTimeout time.Duration
	// ElectionGrace is how long etcd may answer nothing while most of its
	// members are up (a leader election) before it is declared
	// unavailable: DefaultElectionGrace.
	ElectionGrace time.Duration
	// TokenCacheSize bounds the token records kept in memory to answer
	// Lookup without an etcd read (tokencache.go): 0 takes
	// DefaultTokenCacheSize, a negative size keeps none.
	TokenCacheSize int
	// Logger receives what the store refuses to trust and etcd's outages;
	// nil discards.
	Logger *slog.Logger
}

// Store keeps tokens in etcd. It is safe for concurrent use.
type Store struct {
	cli           *clientv3.Client
	ttl           time.Duration
	timeout       time.Duration
	revocationTTL time.Duration
	bucket        time.Duration // width of a lease-sharing time bucket
	leaseTTL      int64         // seconds: ttl + bucket, rounded up

	log       *slog.Logger
	locations *index
	health    *health

	mu    sync.Mutex
	grant *leaseGrant // the newest lease, or the grant of it in flight

	untrustedMu sync.Mutex
	untrusted   map[string]bool // hashes of refused records already logged

	mints       chan *pendingMint // mints waiting for their group (groupcommit.go)
	startGroups sync.Once
}

// maxUntrustedLogged bounds the set of refused records remembered so each
// is logged once.
const maxUntrustedLogged = 1024

// leaseGrant is one shared lease, granted once for a time bucket. done is
// closed when id and err are set.
type leaseGrant struct {
	bucket int64
	done   chan struct{}
	id     clientv3.LeaseID
	err    error
}

// New returns a store on cli. The caller keeps ownership of cli.
func New(cli *clientv3.Client, opts Options) (*Store, error) {
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.RevocationTTL == 0 {
		opts.RevocationTTL = DefaultRevocationTTL
	}
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = DefaultProbeTimeout
	}
	if opts.ElectionGrace == 0 {
		opts.ElectionGrace = DefaultElectionGrace
	}
	if opts.TokenCacheSize == 0 {
		opts.TokenCacheSize = DefaultTokenCacheSize
	}
	if opts.ProbeInterval < 0 || opts.ProbeTimeout < 0 || opts.ElectionGrace < 0 {
		return nil, fmt.Errorf("etcd probe interval %v, timeout %v, election grace %v: want positive durations",
			opts.ProbeInterval, opts.ProbeTimeout, opts.ElectionGrace)
	}
	if opts.TTL < time.Second {
		return nil, fmt.Errorf("token ttl %v: want at least 1s", opts.TTL)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bucket := max(opts.TTL/10, time.Second)
	s := &Store{
		cli:           cli,
		ttl:           opts.TTL,
		timeout:       opts.Timeout,
		revocationTTL: opts.RevocationTTL,
		bucket:        bucket,
		leaseTTL:      ceilSeconds(opts.TTL + bucket),
		log:           log,
		locations:     newIndex(cli, opts.Timeout, opts.TokenCacheSize, log),
		untrusted:     map[string]bool{},
		mints:         make(chan *pendingMint),
	}
	s.health = newHealth(s.probe, opts.ProbeInterval, opts.ProbeTimeout, log)
	s.health.quorate = s.quorate
	s.health.grace = opts.ElectionGrace
	// Probes run until the etcd client is closed, as the location index does.
	go s.health.run(cli.Ctx())
	return s, nil
}

// TTL is how long a minted token is valid.
func (s *Store) TTL() time.Duration { return s.ttl }

// Minted is a new token and what was stored for it.
type Minted struct {
	// Token is the secret handed to the client; it is not stored anywhere.
	Token string
	// Hash is registry.TokenHash(Token), the token's key in etcd.
	Hash   string
	Record registry.Token
}

// Mint creates a token for rec, setting its CreatedAt and ExpiresAt.
func (s *Store) Mint(ctx context.Context, rec registry.Token) (Minted, error) {
	return s.mint(ctx, rec, nil)
}

// MintFromClaim is Mint for a record whose console is the one agent (a
// Vouched answer of Locate) published: the token is written only if the
// instance's claim and its host's registration are still those Locate
// read, in the same transaction; ErrClaimChanged otherwise. So no token is
// ever minted from a claim older than etcd's at the time of the mint.
func (s *Store) MintFromClaim(ctx context.Context, agent Agent, rec registry.Token) (Minted, error) {
	if !agent.Vouched {
		return Minted{}, errors.New("mint from claim: the location vouches for no console")
	}
	return s.mint(ctx, rec, []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(registry.ComputeInstanceKey(agent.ComputeHost, rec.InstanceUUID)), "=", agent.claimRev),
		clientv3.Compare(clientv3.ModRevision(registry.ComputeKey(agent.ComputeHost)), "=", agent.Registration),
	})
}

// mint writes a new token for rec if the guards hold.
func (s *Store) mint(ctx context.Context, rec registry.Token, guards []clientv3.Cmp) (Minted, error) {
	token, err := newToken()
	if err != nil {
		return Minted{}, err
	}
	hash := registry.TokenHash(token)
	now := time.Now()
	rec.CreatedAt = now.UTC()
	rec.ExpiresAt = now.Add(s.ttl).UTC()
	value, err := json.Marshal(rec)
	if err != nil {
		return Minted{}, fmt.Errorf("encode token record: %w", err)
	}
	key := registry.TokenKey(hash)
	leaseRetried, resent := false, 0
	for {
		lease, err := s.lease(ctx, now)
		if err != nil {
			return Minted{}, err
		}
		resp, err := s.commitMint(ctx,
			append(guards, clientv3.Compare(clientv3.CreateRevision(key), "=", 0)),
			[]clientv3.Op{
				clientv3.OpPut(key, string(value), clientv3.WithLease(lease)),
				clientv3.OpPut(registry.InstanceTokenKey(rec.InstanceUUID, hash), "", clientv3.WithLease(lease)),
			},
			[]clientv3.Op{clientv3.OpGet(key)})
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && !leaseRetried {
			// The shared lease ended early (revoked by an operator, or
			// expired while etcd was down): forget it and grant another.
			leaseRetried = true
			s.forgetLease(lease)
			continue
		}
		if errors.Is(err, errNewTerm) && resent < maxResend {
			// Sent to a leader that died: send it again (the guard makes
			// it one write however often it lands; see below).
			resent++
			continue
		}
		if err != nil {
			return Minted{}, s.fail(ctx, "mint token", err)
		}
		if !resp.Succeeded && resent > 0 {
			// An earlier sending landed after all: the token is ours if
			// its record is the one written.
			if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && string(kvs[0].Value) == string(value) {
				return Minted{Token: token, Hash: hash, Record: rec}, nil
			}
		}
		if !resp.Succeeded {
			if len(guards) > 0 {
				// A collision of two 256-bit random tokens is not to be
				// expected: the claim changed.
				return Minted{}, ErrClaimChanged
			}
			// Two equal 256-bit random tokens: not expected in practice.
			return Minted{}, errors.New("mint token: token hash collision")
		}
		return Minted{Token: token, Hash: hash, Record: rec}, nil
	}
}

// Entry is a token found in the store.
type Entry struct {
	Hash   string
	Record registry.Token
	// Revision is the etcd revision that created the token's record
	// (ConnectInfo.token_revision): a revocation written later ends the
	// sessions opened with it.
	Revision int64
	// FromMemory says the record came from the store's memory, not an
	// etcd read (Options.TokenCacheSize).
	FromMemory bool
	// modRevision is the record's ModRevision, the guard of Consume.
	modRevision int64
}

// Lookup returns the record of a valid token, or ErrNotFound when it is
// unknown or expired (even if its lease has not ended yet), or when its
// record is not one consoleauth wrote (no lease). A string that cannot be
// a token is ErrMalformedToken, without a look-up.
//
// It reads one member (a serializable read, no round of the quorum) that
// has a leader (clientv3.WithRequireLeader: a member cut off from the
// quorum loses it within an election timeout), and again linearizably when
// that fails or the token is not there (a member behind the leader may not
// have a token minted an instant ago). A follower with a leader trails it
// by the time to apply what was committed: a token found there may have
// been revoked that instant, and then the revocation's etcd revision is
// above the token's (Revoke deletes, then announces), so the proxies end
// the session such an answer lets in, as they end every session of a
// token older than a revocation. Consume, the one use a token can have
// when single-use, is a linearizable guarded transaction.
//
// Before either read, the record is looked for in memory, where the
// store's watch keeps records (tokencache.go) while etcd is healthy: it is
// as fresh as the serializable read's (a watch delivery behind the
// leader). Memory only vouches for a valid token: a token not there
// (minted an instant ago on another replica, or beyond the cache's size)
// or refused there is read from etcd as above.
func (s *Store) Lookup(ctx context.Context, token string) (Entry, error) {
	if err := CheckToken(token); err != nil {
		return Entry{}, err
	}
	hash := registry.TokenHash(token)
	if t, ok := s.locations.token(hash); ok && s.health.current().Err() == nil {
		if e, err := s.entry(hash, t, false); err == nil {
			if t.rec == nil {
				rec := e.Record
				s.locations.decoded(hash, t.mod, &rec)
			}
			e.FromMemory = true
			return e, nil
		}
	}
	key := registry.TokenKey(hash)
	cctx, done := s.callLocal(ctx)
	resp, err := s.cli.Get(clientv3.WithRequireLeader(cctx), key, clientv3.WithSerializable())
	if err = done(err); ctx.Err() == nil && (err != nil || len(resp.Kvs) == 0) {
		cctx, done = s.call(ctx)
		resp, err = s.cli.Get(cctx, key)
		err = done(err)
	}
	if err != nil {
		return Entry{}, s.fail(ctx, "get token", err)
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, ErrNotFound
	}
	kv := resp.Kvs[0]
	if string(kv.Key) != key {
		s.refuseUntrusted(hash)
		return Entry{}, ErrNotFound
	}
	return s.entry(hash, cachedOf(kv), true)
}

// entry is the Entry of a valid token's record as etcd holds it, or
// ErrNotFound: expired, or not written by consoleauth (no lease; logged
// when log).
func (s *Store) entry(hash string, t cachedToken, log bool) (Entry, error) {
	if t.lease == 0 {
		if log {
			s.refuseUntrusted(hash)
		}
		return Entry{}, ErrNotFound
	}
	var rec registry.Token
	if t.rec != nil {
		rec = *t.rec
	} else if err := json.Unmarshal(t.value, &rec); err != nil {
		return Entry{}, fmt.Errorf("decode token record %s: %w", registry.HashPrefix(hash), err)
	}
	if !time.Now().Before(rec.ExpiresAt) {
		return Entry{}, ErrNotFound
	}
	return Entry{Hash: hash, Record: rec, Revision: t.created, modRevision: t.mod}, nil
}

// refuseUntrusted logs, once per token hash, a record consoleauth did not
// write.
func (s *Store) refuseUntrusted(hash string) {
	s.untrustedMu.Lock()
	seen := s.untrusted[hash]
	if !seen {
		if len(s.untrusted) >= maxUntrustedLogged {
			clear(s.untrusted)
		}
		s.untrusted[hash] = true
	}
	s.untrustedMu.Unlock()
	if !seen {
		s.log.Warn("token record without a lease refused: not written by consoleauth",
			"token_hash", registry.HashPrefix(hash))
	}
}

// Consume deletes a token found by Lookup, for single-use tokens. Of
// concurrent callers holding the same Entry exactly one succeeds: the delete
// is guarded by the revision Lookup saw, so the others get ErrNotFound.
func (s *Store) Consume(ctx context.Context, e Entry) error {
	key := registry.TokenKey(e.Hash)
	cctx, done := s.call(ctx)
	resp, err := s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", e.modRevision)).
		Then(
			clientv3.OpDelete(key),
			clientv3.OpDelete(registry.InstanceTokenKey(e.Record.InstanceUUID, e.Hash)),
		).Commit()
	if err := done(err); err != nil {
		return s.fail(ctx, "consume token", err)
	}
	if !resp.Succeeded {
		return ErrNotFound
	}
	s.locations.fence(resp.Header.Revision)
	return nil
}

// Revoke deletes every token of an instance with its index, and then
// announces the revocation under registry.RevocationKey(uuid) on a short
// lease so that proxies end the instance's open sessions. reason is a code
// of registry.RevocationReasons ("" is "revoked"; ErrUnknownReason
// otherwise); the announcement carries its sentence. It returns how many
// tokens it deleted. The announcement is written even when no token was
// left, since sessions outlive their tokens.
func (s *Store) Revoke(ctx context.Context, uuid, reason string) (int, error) {
	sentence, ok := registry.RevocationSentence(reason)
	if !ok {
		return 0, ErrUnknownReason
	}
	prefix := registry.InstanceTokensPrefix(uuid)
	cctx, done := s.call(ctx)
	list, err := s.cli.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err := done(err); err != nil {
		return 0, s.fail(ctx, "list instance tokens", err)
	}

	cctx, done = s.call(ctx)
	grant, err := s.cli.Grant(cctx, ceilSeconds(s.revocationTTL))
	if err := done(err); err != nil {
		return 0, s.fail(ctx, "grant revocation lease", err)
	}
	announcement, err := json.Marshal(registry.Revocation{Reason: sentence, RevokedAt: time.Now().UTC()})
	if err != nil {
		return 0, fmt.Errorf("encode revocation: %w", err)
	}

	// The announcement goes last, with the last batch: once it is visible
	// no token it ends still checks as valid, and its revision is above
	// every such token's. With up to 63 tokens (2 deletes each) the
	// revocation is one atomic transaction.
	var ops []clientv3.Op
	var isToken []bool
	for _, kv := range list.Kvs {
		hash := strings.TrimPrefix(string(kv.Key), prefix)
		ops = append(ops, clientv3.OpDelete(registry.TokenKey(hash)), clientv3.OpDelete(string(kv.Key)))
		isToken = append(isToken, true, false)
	}
	ops = append(ops, clientv3.OpPut(registry.RevocationKey(uuid), string(announcement), clientv3.WithLease(grant.ID)))
	isToken = append(isToken, false)
	revoked := 0
	for start := 0; start < len(ops); start += maxTxnOps {
		end := min(start+maxTxnOps, len(ops))
		cctx, done := s.call(ctx)
		resp, err := s.cli.Txn(cctx).Then(ops[start:end]...).Commit()
		if err := done(err); err != nil {
			return revoked, s.fail(ctx, "revoke instance tokens", err)
		}
		s.locations.fence(resp.Header.Revision)
		for i, r := range resp.Responses {
			if del := r.GetResponseDeleteRange(); del != nil && isToken[start+i] {
				revoked += int(del.Deleted)
			}
		}
	}
	return revoked, nil
}

// Ping reports whether etcd answers a linearizable read now (the health
// probe's), failing at once while the probe finds etcd unavailable.
func (s *Store) Ping(ctx context.Context) error {
	cctx, done := s.call(ctx)
	if err := done(s.probe(cctx)); err != nil {
		return s.fail(ctx, "ping", err)
	}
	return nil
}

// lease returns the shared lease of now's time bucket, granting it if this
// caller is the first of the bucket. Concurrent callers of a new bucket wait
// for one Grant instead of each granting their own.
func (s *Store) lease(ctx context.Context, now time.Time) (clientv3.LeaseID, error) {
	bucket := now.UnixNano() / int64(s.bucket)
	s.mu.Lock()
	g := s.grant
	// A lease of a later bucket serves too: it was granted later, so it
	// outlives every token of this one.
	if g == nil || g.bucket < bucket || failed(g) {
		g = &leaseGrant{bucket: bucket, done: make(chan struct{})}
		s.grant = g
		s.mu.Unlock()
		// Not bound to this caller's cancellation: others wait on it too.
		// A grant cut by an election is sent again: a lease granted twice
		// leaves one unused, which expires.
		for resent := 0; ; resent++ {
			gctx, done := s.callWrite(context.WithoutCancel(ctx))
			resp, err := s.cli.Grant(gctx, s.leaseTTL)
			err = done(err)
			if errors.Is(err, errNewTerm) && resent < maxResend {
				continue
			}
			if err != nil {
				g.err = s.fail(ctx, "grant token lease", err)
			} else {
				g.id = resp.ID
			}
			break
		}
		close(g.done)
	} else {
		s.mu.Unlock()
	}
	select {
	case <-g.done:
		return g.id, g.err
	case <-ctx.Done():
		return 0, fmt.Errorf("grant token lease: %w", ctx.Err())
	}
}

// forgetLease drops the shared lease id if it is still the current one.
func (s *Store) forgetLease(id clientv3.LeaseID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grant != nil && s.grant.id == id {
		s.grant = nil
	}
}

// failed reports whether a finished grant failed. Called with s.mu held.
func failed(g *leaseGrant) bool {
	select {
	case <-g.done:
		return g.err != nil
	default:
		return false
	}
}

// fail wraps an etcd error: the caller's own cancellation stays what it is,
// anything else means the store is unavailable. An outage is the health
// probe's to log, once; any other failure (a permission etcd refused, say)
// is logged here, since the caller only learns that the store is
// unavailable.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	if outage(err) {
		s.log.Debug("etcd call failed", "op", op, "error", err)
	} else {
		s.log.Warn("etcd call failed", "op", op, "error", err)
	}
	return fmt.Errorf("%w: %s: %v", ErrStoreUnavailable, op, err)
}

func newToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
