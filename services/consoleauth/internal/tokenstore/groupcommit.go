package tokenstore

import (
	"context"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Mints are written in groups (group commit): every mint is a transaction
// of its own, guarded by its own comparisons, and the mints waiting while
// earlier groups are in flight go to etcd together, each as a nested
// transaction of one outer transaction. etcd then takes one raft entry
// and one disk sync for the group instead of one per mint, so a burst of
// mints costs etcd about what a single one does, and an idle store sends
// a lone mint at once, as before.
const (
	// maxGroup is the most mints in one transaction: etcd refuses a
	// transaction of more than --max-txn-ops (128 by default) operations
	// at any level.
	maxGroup = 64
	// groupsInFlight is how many groups may wait for etcd at once.
	groupsInFlight = 4
)

// pendingMint is a mint's transaction waiting for its group.
type pendingMint struct {
	op   clientv3.Op // an OpTxn
	done chan mintResult
}

type mintResult struct {
	resp *etcdserverpb.TxnResponse // the mint's own (nested) transaction's answer
	err  error                     // the group's error: none of its mints may be taken as written
}

// commitMint sends a mint's transaction (If cmps Then then Else els) with
// the group waiting at the time. Each mint of a group succeeds or fails on
// its own comparisons; an error of the group (etcd unavailable, a lease
// gone, a new leader) is every mint's, and each caller handles it as it
// would its own transaction's.
func (s *Store) commitMint(ctx context.Context, cmps []clientv3.Cmp, then, els []clientv3.Op) (*etcdserverpb.TxnResponse, error) {
	s.startGroups.Do(func() { go s.commitGroups(s.cli.Ctx()) })
	p := &pendingMint{op: clientv3.OpTxn(cmps, then, els), done: make(chan mintResult, 1)}
	select {
	case s.mints <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r.resp, r.err
	case <-ctx.Done():
		// The group may still write it: a token nobody holds, which its
		// lease ends.
		return nil, ctx.Err()
	}
}

// commitGroups sends the waiting mints in groups until ctx (the etcd
// client's) ends.
func (s *Store) commitGroups(ctx context.Context) {
	slots := make(chan struct{}, groupsInFlight)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var group []*pendingMint
		select {
		case p := <-s.mints:
			group = append(group, p)
		case <-ctx.Done():
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case p := <-s.mints:
				group = append(group, p)
			default:
				break more
			}
		}
		go func() {
			defer func() { <-slots }()
			s.commitGroup(group)
		}()
	}
}

// commitGroup writes one group in one transaction and hands each mint its
// answer.
func (s *Store) commitGroup(group []*pendingMint) {
	ops := make([]clientv3.Op, len(group))
	for i, p := range group {
		ops[i] = p.op
	}
	cctx, done := s.callWrite(context.Background())
	resp, err := s.cli.Txn(cctx).Then(ops...).Commit()
	err = done(err)
	for i, p := range group {
		if err != nil {
			p.done <- mintResult{err: err}
			continue
		}
		p.done <- mintResult{resp: resp.Responses[i].GetResponseTxn()}
	}
}
