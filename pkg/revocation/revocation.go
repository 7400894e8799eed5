// Package revocation lets proxies end live sessions when consoleauth revokes
// an instance's tokens: it watches registry.RevocationsPrefix in etcd and
// reports each revocation once.
package revocation

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Watch calls fn for every revocation written from now until ctx ends. It
// survives etcd outages: the client resumes the watch, and after a
// compaction the watch restarts from the current revision.
func Watch(ctx context.Context, cli *clientv3.Client, log *slog.Logger, fn func(uuid string, r registry.Revocation)) {
	var rev int64
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterDelete()}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev+1))
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range cli.Watch(wctx, registry.RevocationsPrefix, opts...) {
			if err := resp.Err(); err != nil {
				log.Warn("revocation watch interrupted", "error", err)
				if resp.CompactRevision > 0 {
					rev = 0
				}
				break
			}
			for _, ev := range resp.Events {
				rev = ev.Kv.ModRevision
				var r registry.Revocation
				if err := json.Unmarshal(ev.Kv.Value, &r); err != nil {
					log.Error("bad revocation record", "key", string(ev.Kv.Key), "error", err)
					continue
				}
				fn(strings.TrimPrefix(string(ev.Kv.Key), registry.RevocationsPrefix), r)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
