package grpcclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"
)

// scheme is the resolver of one ClientConn's endpoint list; it is handed
// to that ClientConn only (grpc.WithResolvers), never registered globally.
const scheme = "vncgate-endpoints"

// Resolution limits.
const (
	// lookupTimeout bounds one DNS lookup.
	lookupTimeout = 5 * time.Second
	// minResolveGap spaces re-resolutions that gRPC asks for (it asks
	// whenever a connection fails), so a dead replica does not turn into
	// a stream of DNS queries (a shorter resolve interval, in tests,
	// shortens it).
	minResolveGap = 2 * time.Second
)

// endpointsBuilder builds the resolver of one endpoint list.
type endpointsBuilder struct {
	name      string
	endpoints []Endpoint
	lookup    func(ctx context.Context, host string) ([]string, error)
	interval  time.Duration
	log       *slog.Logger
}

func (b *endpointsBuilder) Scheme() string { return scheme }

func (b *endpointsBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &endpointsResolver{
		b:      b,
		cc:     cc,
		cancel: cancel,
		now:    make(chan struct{}, 1),
		known:  make(map[Endpoint][]string),
		failed: make(map[Endpoint]string),
	}
	r.wg.Go(func() { r.run(ctx) })
	return r, nil
}

// endpointsResolver hands gRPC one resolver.Endpoint per address of every
// endpoint: IP addresses as they are, DNS names as looked up, again every
// interval and (at most every minResolveGap) when gRPC asks. A name that
// fails to resolve keeps its last addresses.
type endpointsResolver struct {
	b      *endpointsBuilder
	cc     resolver.ClientConn
	cancel context.CancelFunc
	wg     sync.WaitGroup
	now    chan struct{}

	// Owned by run's goroutine.
	known  map[Endpoint][]string // last good addresses of each DNS name
	failed map[Endpoint]string   // the error last logged for a name
	last   []string              // addresses last handed to gRPC
}

func (r *endpointsResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *endpointsResolver) Close() {
	r.cancel()
	r.wg.Wait()
}

func (r *endpointsResolver) run(ctx context.Context) {
	r.resolve(ctx)
	if !slices.ContainsFunc(r.b.endpoints, func(e Endpoint) bool { return !e.IsIP() }) {
		return // nothing will ever change
	}
	tick := time.NewTicker(r.b.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.now:
		}
		r.resolve(ctx)
		// Rate limit: a request arriving meanwhile waits for the gap.
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(minResolveGap, r.b.interval)):
		}
	}
}

// resolve looks every endpoint up and updates gRPC's view.
func (r *endpointsResolver) resolve(ctx context.Context) {
	var addrs []resolver.Address
	seen := map[string]bool{}
	var errs []error
	for _, ep := range r.b.endpoints {
		ips, err := r.addresses(ctx, ep)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			errs = append(errs, err)
		}
		for _, ip := range ips {
			addr := net.JoinHostPort(ip, strconv.Itoa(ep.Port))
			if seen[addr] {
				continue
			}
			seen[addr] = true
			// ServerName: the certificate is checked against the name
			// the operator wrote, not the address it resolved to.
			addrs = append(addrs, resolver.Address{Addr: addr, ServerName: ep.Host})
		}
	}
	if len(addrs) == 0 {
		r.cc.ReportError(fmt.Errorf("%s: no address to connect to: %w", r.b.name, errors.Join(errs...)))
		return
	}
	list := make([]string, len(addrs))
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		list[i] = a.Addr
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{a}}
	}
	if !slices.Equal(list, r.last) {
		if r.last != nil {
			r.b.log.Info(r.b.name+" addresses changed", "addresses", strings.Join(list, ","), "before", strings.Join(r.last, ","))
		}
		r.last = list
	}
	// An error here means the balancer wants another resolution; gRPC
	// then calls ResolveNow.
	_ = r.cc.UpdateState(resolver.State{Endpoints: eps})
}

// addresses returns ep's IP addresses: ep's own, or its name's (the last
// good ones when a lookup fails, with the error).
func (r *endpointsResolver) addresses(ctx context.Context, ep Endpoint) ([]string, error) {
	if ep.IsIP() {
		return []string{ep.Host}, nil
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	ips, err := r.b.lookup(lctx, ep.Host)
	cancel()
	if err == nil && len(ips) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		err = fmt.Errorf("resolve %s: %w", ep.Host, err)
		if msg := err.Error(); r.failed[ep] != msg && ctx.Err() == nil {
			r.failed[ep] = msg
			r.b.log.Warn(r.b.name+" endpoint does not resolve; keeping its last addresses", "endpoint", ep.String(),
				"last", strings.Join(r.known[ep], ","), "error", err)
		}
		return r.known[ep], err
	}
	if _, was := r.failed[ep]; was {
		delete(r.failed, ep)
		r.b.log.Info(r.b.name+" endpoint resolves again", "endpoint", ep.String(), "addresses", strings.Join(ips, ","))
	}
	slices.Sort(ips)
	r.known[ep] = ips
	return ips, nil
}
