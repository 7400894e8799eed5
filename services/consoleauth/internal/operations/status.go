package operations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// GetStatus implements consoleauthv1.OperationsServiceServer. etcd's
// members are asked one by one, so the answer says which are down even
// without quorum; agents, proxies and sessions need quorum and are left
// empty (etcd_healthy false) without it.
func (s *Server) GetStatus(ctx context.Context, _ *consoleauthv1.GetStatusRequest) (*consoleauthv1.GetStatusResponse, error) {
	resp := &consoleauthv1.GetStatusResponse{}
	var wg sync.WaitGroup
	wg.Go(func() { resp.EtcdMembers = s.members(ctx) })
	err := s.fleet(ctx, resp)
	wg.Wait()
	switch {
	case err == nil:
		resp.EtcdHealthy = true
	case errors.Is(err, ErrEtcd):
		// The members say why; the rest of the answer stands.
		s.log.WarnContext(ctx, "status: etcd cannot serve a linearizable read", "error", err)
		resp.Agents, resp.Proxies, resp.Sessions = nil, nil, 0
	default:
		return nil, s.answer(ctx, err)
	}
	return resp, nil
}

// fleet fills agents, proxies and sessions from linearizable reads.
func (s *Server) fleet(ctx context.Context, resp *consoleauthv1.GetStatusResponse) error {
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	txn, err := s.cli.Txn(cctx).Then(
		clientv3.OpGet(registry.ComputesPrefix, clientv3.WithPrefix(), clientv3.WithLimit(MaxAgents)),
		clientv3.OpGet(registry.ProxiesPrefix, clientv3.WithPrefix(), clientv3.WithLimit(MaxProxies)),
		clientv3.OpGet(registry.ProxyDrainsPrefix, clientv3.WithPrefix(), clientv3.WithLimit(MaxProxies)),
		clientv3.OpGet(registry.SessionsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()),
	).Commit()
	cancel()
	if err != nil {
		return etcdError(err)
	}
	rev := txn.Header.Revision
	computes := txn.Responses[0].GetResponseRange().GetKvs()
	proxies := txn.Responses[1].GetResponseRange().GetKvs()
	drains := txn.Responses[2].GetResponseRange().GetKvs()
	resp.Sessions = clamp32(txn.Responses[3].GetResponseRange().GetCount())

	for _, kv := range computes {
		host := strings.TrimPrefix(string(kv.Key), registry.ComputesPrefix)
		var c registry.Compute
		if host == "" || strings.Contains(host, "/") || json.Unmarshal(kv.Value, &c) != nil {
			continue
		}
		resp.Agents = append(resp.Agents, &consoleauthv1.AgentStatus{Host: host, Address: c.Address})
	}
	drainOf := map[string]registry.ProxyDrain{}
	for _, kv := range drains {
		var d registry.ProxyDrain
		if json.Unmarshal(kv.Value, &d) == nil {
			drainOf[strings.TrimPrefix(string(kv.Key), registry.ProxyDrainsPrefix)] = d
		}
	}
	for _, kv := range proxies {
		name := strings.TrimPrefix(string(kv.Key), registry.ProxiesPrefix)
		var p registry.Proxy
		if registry.CheckProxyName(name) != nil || json.Unmarshal(kv.Value, &p) != nil {
			continue
		}
		ps := &consoleauthv1.ProxyStatus{Name: name, ConsoleType: p.ConsoleType, Address: p.Address,
			Started: timestamp(p.Started), Draining: p.Draining, DrainDeadline: timestamp(p.DrainDeadline)}
		// A drain asked but not yet taken up by the proxy shows already.
		if d, ok := drainOf[name]; ok && !p.Draining {
			ps.Draining, ps.DrainDeadline = true, timestamppb.New(d.Deadline)
		}
		resp.Proxies = append(resp.Proxies, ps)
	}

	// Per-agent instance counts and per-proxy session counts: one count
	// each, at the same revision, a few at a time.
	var counts []func(context.Context) error
	for _, a := range resp.Agents {
		counts = append(counts, func(ctx context.Context) error {
			n, err := s.count(ctx, registry.ComputeInstancesPrefix(a.Host), rev)
			a.Instances = n
			return err
		})
	}
	for _, p := range resp.Proxies {
		counts = append(counts, func(ctx context.Context) error {
			n, err := s.count(ctx, registry.ProxySessionsPrefix(p.Name), rev)
			p.Sessions = n
			return err
		})
	}
	return runLimited(ctx, parallel, counts)
}

// count is the number of keys under prefix at revision rev.
func (s *Server) count(ctx context.Context, prefix string, rev int64) (int32, error) {
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(rev))
	if err != nil {
		return 0, etcdError(err)
	}
	return clamp32(resp.Count), nil
}

// runLimited runs fns, at most n at once, and returns the first error.
func runLimited(ctx context.Context, n int, fns []func(context.Context) error) error {
	sem := make(chan struct{}, n)
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = fn(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// members asks each etcd member for its status, through its first client
// URL; without a member list (no quorum) it asks the client's endpoints.
func (s *Server) members(ctx context.Context) []*consoleauthv1.EtcdMember {
	var out []*consoleauthv1.EtcdMember
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	list, err := s.cli.MemberList(cctx, clientv3.WithSerializable())
	cancel()
	if err == nil {
		for _, m := range list.Members {
			e := &consoleauthv1.EtcdMember{Name: m.Name}
			if len(m.ClientURLs) > 0 {
				e.Endpoint = m.ClientURLs[0]
			}
			out = append(out, e)
		}
	} else {
		s.log.WarnContext(ctx, "status: etcd member list unavailable; asking the configured endpoints", "error", err)
		for _, ep := range s.cli.Endpoints() {
			out = append(out, &consoleauthv1.EtcdMember{Endpoint: ep})
		}
	}
	slices.SortFunc(out, func(a, b *consoleauthv1.EtcdMember) int { return strings.Compare(a.Endpoint, b.Endpoint) })
	var fns []func(context.Context) error
	for _, m := range out {
		fns = append(fns, func(ctx context.Context) error {
			s.memberStatus(ctx, m)
			return nil
		})
	}
	_ = runLimited(ctx, parallel, fns)
	return out
}

// memberStatus fills m's health, leadership and size from its Status.
func (s *Server) memberStatus(ctx context.Context, m *consoleauthv1.EtcdMember) {
	if m.Endpoint == "" {
		m.Error = "no client URL (a member not started yet)"
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	st, err := s.cli.Status(cctx, m.Endpoint)
	if err != nil {
		m.Error = "unreachable"
		s.log.DebugContext(ctx, "status: etcd member unreachable", "endpoint", m.Endpoint, "error", err)
		return
	}
	m.DbSizeBytes = st.DbSize
	m.Leader = st.Leader != 0 && st.Leader == st.Header.GetMemberId()
	switch {
	case len(st.Errors) > 0:
		m.Error = strings.Join(st.Errors, "; ")
	case st.Leader == 0:
		m.Error = "no leader"
	default:
		m.Healthy = true
	}
	if m.Name == "" {
		m.Name = fmt.Sprintf("%x", st.Header.GetMemberId())
	}
}

func clamp32(n int64) int32 { return int32(min(n, 1<<31-1)) }
