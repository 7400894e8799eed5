package tokenstore

import (
	"log/slog"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// DefaultTokenCacheSize is Options.TokenCacheSize's default: tokens of
// about 10,000 console requests a minute for the default ttl, in about
// 50 MB at most.
const DefaultTokenCacheSize = 100_000

// tokenCache is the index's copy of the token records (registry.TokenKey),
// so that a check of a token minted more than a watch delivery ago (the
// usual case: the browser loads the page first) is answered from memory
// (Store.Lookup), not by an etcd read. It follows etcd on the index's
// stream and is trusted only while the index is current (index.current):
// a record is at most as old as the watch's delivery, the argument of a
// serializable read (see Lookup). It holds at most cap records: beyond
// that, and for a token minted an instant ago, Lookup reads etcd as
// without it. Values are kept as etcd holds them and decoded when used.
//
// A replica reads its own deletions: after this store deleted tokens
// (Revoke, Consume) at some revision, memory is not used until the watch
// has delivered that revision (fence), so a token this replica revoked
// never checks valid here, not even for the instant before the watch
// delivers the deletion.
type tokenCache struct {
	cap    int                    // at most this many records; 0: none kept, no watch
	byHash map[string]cachedToken // guarded by the index's mu
	full   bool                   // a record was left out since the cache was last below cap (logged once)
	fenced int64                  // memory is used only once the watch delivered this revision
}

// cachedToken is one token record as etcd holds it, or decoded once used
// (rec, which then replaces value: a token is usually checked more than
// once, by reconnects, and is minted on every replica's watch).
type cachedToken struct {
	value        []byte
	rec          *registry.Token
	lease        int64
	created, mod int64
}

// off reports whether no records are kept.
func (c *tokenCache) off() bool { return c.cap <= 0 }

// read is the index's read of the records, up to cap.
func (c *tokenCache) read() clientv3.Op {
	return clientv3.OpGet(registry.TokensPrefix, clientv3.WithPrefix(), clientv3.WithLimit(int64(max(c.cap, 1))))
}

// load returns the records of the index's read (nothing when off), and
// whether some were left out.
func (c *tokenCache) load(r *etcdserverpb.RangeResponse) (m map[string]cachedToken, more bool) {
	m = map[string]cachedToken{}
	if c.off() {
		return m, false
	}
	for _, kv := range r.GetKvs() {
		if hash, ok := tokenHashOf(kv.Key); ok {
			m[hash] = cachedOf(kv)
		}
	}
	return m, r.GetMore()
}

// reset holds what load returned. Called with the index's mu held.
func (c *tokenCache) reset(m map[string]cachedToken, more bool, log *slog.Logger) {
	c.byHash = m
	if more {
		c.filled(log)
	}
}

// filled records that a record was left out, logging it once while the
// cache stays full.
func (c *tokenCache) filled(log *slog.Logger) {
	if !c.full {
		c.full = true
		log.Warn("token cache full: checks of newer tokens read etcd (raise token_cache_size)",
			"token_cache_size", c.cap)
	}
}

// apply records one change of a token record. Called with the index's mu held.
func (c *tokenCache) apply(ev *clientv3.Event, log *slog.Logger) {
	hash, ok := tokenHashOf(ev.Kv.Key)
	if !ok {
		return
	}
	if ev.Type == clientv3.EventTypeDelete {
		delete(c.byHash, hash)
		if c.full && len(c.byHash) < c.cap*9/10 {
			c.full = false
		}
		return
	}
	if _, held := c.byHash[hash]; !held && len(c.byHash) >= c.cap {
		c.filled(log)
		return
	}
	c.byHash[hash] = cachedOf(ev.Kv)
}

// tokenHashOf returns the token hash a record's key names.
func tokenHashOf(key []byte) (string, bool) {
	hash, ok := strings.CutPrefix(string(key), registry.TokensPrefix)
	return hash, ok && hash != "" && !strings.Contains(hash, "/")
}

func cachedOf(kv *mvccpb.KeyValue) cachedToken {
	return cachedToken{value: kv.Value, lease: kv.Lease, created: kv.CreateRevision, mod: kv.ModRevision}
}

// token returns the record of hash from memory while the index is current.
func (x *index) token(hash string) (cachedToken, bool) {
	if x.tokens.off() || !x.current() {
		return cachedToken{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.revs[familyTokens] < x.tokens.fenced {
		return cachedToken{}, false
	}
	t, ok := x.tokens.byHash[hash]
	return t, ok
}

// fence keeps memory unused until the watch has delivered rev, the
// revision of a deletion this store made.
func (x *index) fence(rev int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.tokens.fenced = max(x.tokens.fenced, rev)
}

// decoded replaces the value of hash's record, as held at revision mod,
// by rec.
func (x *index) decoded(hash string, mod int64, rec *registry.Token) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if t, ok := x.tokens.byHash[hash]; ok && t.mod == mod {
		t.value, t.rec = nil, rec
		x.tokens.byHash[hash] = t
	}
}
