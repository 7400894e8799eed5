// Package operations is consoleauth's OperationsService, the operator's
// view of the fleet (vncgatectl): it answers from etcd, where every proxy
// publishes itself and its live sessions under its lease
// (registry/sessions.go), and acts by writing the keys proxies watch: a
// SessionKill on a short lease, a ProxyDrain on a lease that outlives its
// deadline. An operator never reaches a proxy directly.
//
// What it promises:
//   - every etcd call is bounded by Options.Timeout, every list by a
//     maximum (MaxSessions, MaxProxies, MaxAgents), every scan by pages;
//   - inputs are checked before use (registry.ParseInstanceUUID,
//     CheckProxyName, CheckSessionID, a revocation reason code, a deadline
//     within MaxDrain) and errors never repeat more than a short prefix of
//     them;
//   - answers never carry etcd's errors or key paths: etcd trouble is
//     UNAVAILABLE with authserver.UnavailableMessage, its detail logged;
//   - each kill and drain is logged once with the operator's name.
//
// Who may call it (only authn.RoleOperator) is the guard's business.
package operations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/authserver"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Bounds of what one call reads and answers.
const (
	// MaxSessions is the most sessions ListSessions answers; more matches
	// are RESOURCE_EXHAUSTED, asking for a filter. At a few hundred bytes
	// each they stay well under gRPC's 4 MiB message default.
	MaxSessions = 5000
	// MaxProxies and MaxAgents bound GetStatus's lists.
	MaxProxies = 1000
	MaxAgents  = 5000
	// MaxDrain is the longest drain deadline an operator may ask for.
	MaxDrain = 24 * time.Hour
	// MaxHostLen bounds a compute host filter (a DNS name).
	MaxHostLen = 255
	// pageSize is how many keys one etcd read of a scan returns.
	pageSize = 1000
	// maxScanned bounds the keys one scan reads, whatever matches.
	maxScanned = 200_000
	// parallel bounds the etcd calls GetStatus makes at once.
	parallel = 16
)

// Defaults of Options.
const (
	// DefaultKillWait is how long KillSession waits for the proxy to end
	// the session (issue 12: within 2 s).
	DefaultKillWait = 2 * time.Second
	// DefaultDrain is the drain deadline when neither the call nor
	// Options.Drain gives one: the proxies' own drain_timeout default.
	DefaultDrain = 30 * time.Second
	// killLease is the TTL of a kill key: a proxy acts on it within
	// moments, and one that is down has no session to end.
	killLease = 10 * time.Second
	// drainMargin is how long a drain key outlives its deadline, so the
	// proxy sees it until its sessions ended.
	drainMargin = time.Minute
)

// Domain errors; codeTable maps them to gRPC codes.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrTooMany         = errors.New("too many results")
	// ErrEtcd wraps every etcd failure; callers see only
	// authserver.UnavailableMessage.
	ErrEtcd = errors.New("etcd unavailable")
)

var codeTable = []struct {
	err  error
	code codes.Code
}{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrNotFound, codes.NotFound},
	{ErrTooMany, codes.ResourceExhausted},
	{context.Canceled, codes.Canceled},
	{ErrEtcd, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// Options configure the service.
type Options struct {
	// Timeout bounds every etcd call ([vncgate] etcd_timeout).
	Timeout time.Duration
	// Drain is the drain deadline of a DrainProxy call that gives none
	// ([vncgate] drain_timeout); 0 is DefaultDrain.
	Drain time.Duration
	// KillWait bounds KillSession's wait for the session's end; 0 is
	// DefaultKillWait.
	KillWait time.Duration
	Log      *slog.Logger
}

// Server implements consoleauthv1.OperationsServiceServer.
type Server struct {
	consoleauthv1.UnimplementedOperationsServiceServer

	cli  *clientv3.Client
	opts Options
	log  *slog.Logger
}

// New returns the service reading and writing etcd through cli.
func New(cli *clientv3.Client, opts Options) *Server {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Drain <= 0 {
		opts.Drain = DefaultDrain
	}
	if opts.KillWait <= 0 {
		opts.KillWait = DefaultKillWait
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cli: cli, opts: opts, log: opts.Log}
}

// ListSessions implements consoleauthv1.OperationsServiceServer.
func (s *Server) ListSessions(ctx context.Context, req *consoleauthv1.ListSessionsRequest) (*consoleauthv1.ListSessionsResponse, error) {
	resp, err := s.listSessions(ctx, req)
	return resp, s.answer(ctx, err)
}

func (s *Server) listSessions(ctx context.Context, req *consoleauthv1.ListSessionsRequest) (*consoleauthv1.ListSessionsResponse, error) {
	var instance string
	if u := req.GetInstanceUuid(); u != "" {
		var err error
		if instance, err = registry.ParseInstanceUUID(u); err != nil {
			return nil, invalid("instance_uuid: %v", err)
		}
	}
	prefix := registry.SessionsPrefix
	if p := req.GetProxy(); p != "" {
		if err := registry.CheckProxyName(p); err != nil {
			return nil, invalid("%v", err)
		}
		prefix = registry.ProxySessionsPrefix(p)
	}
	host := req.GetComputeHost()
	if err := checkHost(host); err != nil {
		return nil, err
	}
	out := &consoleauthv1.ListSessionsResponse{}
	err := s.scan(ctx, prefix, false, func(key, value []byte) error {
		ls, ok := s.decodeSession(ctx, key, value)
		if !ok || instance != "" && ls.InstanceUUID != instance || host != "" && ls.ComputeHost != host {
			return nil
		}
		if len(out.Sessions) == MaxSessions {
			return fail(ErrTooMany, "more than %d live sessions match: filter by proxy, instance or host", MaxSessions)
		}
		out.Sessions = append(out.Sessions, toProto(ls))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// KillSession implements consoleauthv1.OperationsServiceServer.
func (s *Server) KillSession(ctx context.Context, req *consoleauthv1.KillSessionRequest) (*consoleauthv1.KillSessionResponse, error) {
	resp, err := s.killSession(ctx, req)
	return resp, s.answer(ctx, err)
}

func (s *Server) killSession(ctx context.Context, req *consoleauthv1.KillSessionRequest) (*consoleauthv1.KillSessionResponse, error) {
	id := req.GetSessionId()
	if err := registry.CheckSessionID(id); err != nil {
		return nil, invalid("%v", err)
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "admin"
	}
	if _, ok := registry.RevocationSentence(reason); !ok {
		return nil, invalid("unknown reason %.40q: want one of %s", reason, strings.Join(registry.RevocationCodes(), ", "))
	}
	// Session ids are unique per proxy only: the first proxy holding one
	// wins. Keys only: the value is read with the key found.
	var key string
	err := s.scan(ctx, registry.SessionsPrefix, true, func(k, _ []byte) error {
		if strings.HasSuffix(string(k), "/"+id) && key == "" {
			key = string(k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if key == "" {
		return nil, fail(ErrNotFound, "no live session %s", id)
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	got, err := s.cli.Get(cctx, key)
	cancel()
	if err != nil {
		return nil, etcdError(err)
	}
	if len(got.Kvs) == 0 {
		return nil, fail(ErrNotFound, "no live session %s (it just ended)", id)
	}
	ls, ok := s.decodeSession(ctx, got.Kvs[0].Key, got.Kvs[0].Value)
	if !ok {
		return nil, fail(ErrNotFound, "no live session %s (its record is unreadable)", id)
	}
	// Watch from just after the read, so a delete between the kill's write
	// and the watch's start is not missed.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	events := s.cli.Watch(wctx, key, clientv3.WithRev(got.Header.Revision+1), clientv3.WithFilterPut())

	by := callerName(ctx)
	lease, err := s.putOnLease(ctx, registry.SessionKillKey(ls.Proxy, ls.ID), killLease,
		registry.SessionKill{Reason: reason, By: by})
	if err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "session kill asked", "session", ls.ID, "proxy", ls.Proxy, "instance", ls.InstanceUUID,
		"reason", reason, "by", by)

	ended := waitDeleted(ctx, events, s.opts.KillWait)
	if ended {
		// Done with: the proxy no longer needs the key.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Timeout)
		if _, err := s.cli.Revoke(rctx, lease); err != nil {
			s.log.DebugContext(ctx, "kill lease not revoked; it expires", "error", err)
		}
		cancel()
	} else {
		s.log.WarnContext(ctx, "session not ended within the wait", "session", ls.ID, "proxy", ls.Proxy,
			"wait", s.opts.KillWait.String())
	}
	return &consoleauthv1.KillSessionResponse{Session: toProto(ls), Ended: ended}, nil
}

// waitDeleted reports whether events delivers a delete within wait.
func waitDeleted(ctx context.Context, events clientv3.WatchChan, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case w, ok := <-events:
			if !ok || w.Err() != nil {
				return false
			}
			for _, ev := range w.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return true
				}
			}
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// DrainProxy implements consoleauthv1.OperationsServiceServer.
func (s *Server) DrainProxy(ctx context.Context, req *consoleauthv1.DrainProxyRequest) (*consoleauthv1.DrainProxyResponse, error) {
	resp, err := s.drainProxy(ctx, req)
	return resp, s.answer(ctx, err)
}

func (s *Server) drainProxy(ctx context.Context, req *consoleauthv1.DrainProxyRequest) (*consoleauthv1.DrainProxyResponse, error) {
	name := req.GetProxy()
	if err := registry.CheckProxyName(name); err != nil {
		return nil, invalid("%v", err)
	}
	d := time.Duration(req.GetDeadlineSeconds()) * time.Second
	switch {
	case d < 0 || d > MaxDrain:
		return nil, invalid("deadline_seconds %d: want 0 (the default, %v) to %d", req.GetDeadlineSeconds(),
			s.opts.Drain, int(MaxDrain.Seconds()))
	case d == 0:
		d = s.opts.Drain
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	resp, err := s.cli.Txn(cctx).Then(
		clientv3.OpGet(registry.ProxyKey(name), clientv3.WithCountOnly()),
		clientv3.OpGet(registry.ProxySessionsPrefix(name), clientv3.WithPrefix(), clientv3.WithCountOnly()),
	).Commit()
	cancel()
	if err != nil {
		return nil, etcdError(err)
	}
	if resp.Responses[0].GetResponseRange().GetCount() == 0 {
		return nil, fail(ErrNotFound, "no live proxy %s", name)
	}
	sessions := resp.Responses[1].GetResponseRange().GetCount()
	deadline := time.Now().Add(d).UTC().Truncate(time.Second)
	by := callerName(ctx)
	if _, err := s.putOnLease(ctx, registry.ProxyDrainKey(name), d+drainMargin,
		registry.ProxyDrain{Deadline: deadline, By: by}); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "proxy drain asked", "proxy", name, "deadline", deadline.Format(time.RFC3339),
		"sessions", sessions, "by", by)
	return &consoleauthv1.DrainProxyResponse{Proxy: name, Deadline: timestamppb.New(deadline), Sessions: clamp32(sessions)}, nil
}

// putOnLease writes v as JSON under key on a new lease of ttl (rounded up
// to whole seconds) and returns the lease.
func (s *Server) putOnLease(ctx context.Context, key string, ttl time.Duration, v any) (clientv3.LeaseID, error) {
	value, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	lease, err := s.cli.Grant(cctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return 0, etcdError(err)
	}
	if _, err := s.cli.Put(cctx, key, string(value), clientv3.WithLease(lease.ID)); err != nil {
		return 0, etcdError(err)
	}
	return lease.ID, nil
}

// scan calls fn for every key under prefix, reading pages of pageSize
// keys (keysOnly: without values) and at most maxScanned keys. An error
// from fn ends the scan and is returned.
func (s *Server) scan(ctx context.Context, prefix string, keysOnly bool, fn func(key, value []byte) error) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from, rev, scanned := prefix, int64(0), 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		if rev > 0 {
			// One revision for every page: a consistent picture.
			opts = append(opts, clientv3.WithRev(rev))
		}
		cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
		resp, err := s.cli.Get(cctx, from, opts...)
		cancel()
		if err != nil {
			return etcdError(err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.Value); err != nil {
				return err
			}
		}
		scanned += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		if scanned >= maxScanned {
			return fail(ErrTooMany, "more than %d keys to read: filter by proxy", maxScanned)
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// decodeSession reads a live session's record, whose proxy and id are
// the key's (what a proxy may write under its own prefix); a record that
// does not parse is skipped with a warning.
func (s *Server) decodeSession(ctx context.Context, key, value []byte) (registry.LiveSession, bool) {
	proxy, id, ok := strings.Cut(strings.TrimPrefix(string(key), registry.SessionsPrefix), "/")
	var ls registry.LiveSession
	if ok && registry.CheckProxyName(proxy) == nil && registry.CheckSessionID(id) == nil {
		ok = json.Unmarshal(value, &ls) == nil
	} else {
		ok = false
	}
	if !ok {
		s.log.WarnContext(ctx, "skipping an unreadable live session record", "proxy", shortText(proxy), "session", shortText(id))
		return ls, false
	}
	ls.Proxy, ls.ID = proxy, id
	return ls, true
}

func toProto(ls registry.LiveSession) *consoleauthv1.LiveSession {
	return &consoleauthv1.LiveSession{
		Id:              ls.ID,
		InstanceUuid:    ls.InstanceUUID,
		Proxy:           ls.Proxy,
		ConsoleType:     ls.ConsoleType,
		Client:          ls.Client,
		ComputeHost:     ls.ComputeHost,
		Started:         timestamp(ls.Started),
		BytesToClient:   ls.BytesToClient,
		BytesToServer:   ls.BytesToServer,
		Updated:         timestamp(ls.Updated),
		MintedBy:        ls.MintedBy,
		TokenHashPrefix: registry.HashPrefix(ls.TokenHashPrefix),
	}
}

// timestamp is nil for the zero time (absent in the record).
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// checkHost bounds a compute host filter: a host name, one key segment.
func checkHost(host string) error {
	if len(host) > MaxHostLen || strings.ContainsAny(host, "/\x00") {
		return invalid("compute_host %.40q: want a host name of at most %d characters", host, MaxHostLen)
	}
	return nil
}

// callerName is the operator's name for audit lines and the kill and
// drain records.
func callerName(ctx context.Context) string {
	id, _ := authn.FromContext(ctx)
	return id.Name
}

func shortText(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// kindError is an error that errors.Is its kind and reads only its own
// message ("no live session abc", not "not found: no live session abc").
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func fail(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) error { return fail(ErrInvalidArgument, format, args...) }

// etcdError keeps the caller's cancellation and wraps anything else as
// ErrEtcd, whose detail only the log sees.
func etcdError(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrEtcd, err)
}

// answer maps a domain error to a gRPC status: its message for the
// caller's mistakes, fixed words for etcd trouble and internal faults
// (logged here).
func (s *Server) answer(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range codeTable {
		if !errors.Is(err, e.err) {
			continue
		}
		switch e.code {
		case codes.Unavailable, codes.DeadlineExceeded:
			s.log.WarnContext(ctx, "etcd call failed", "error", err)
			return status.Error(codes.Unavailable, authserver.UnavailableMessage)
		}
		return status.Error(e.code, err.Error())
	}
	s.log.ErrorContext(ctx, "internal error", "error", err)
	return status.Error(codes.Internal, authserver.InternalMessage)
}
