package grpcclient

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
)

// balancerName is gRPC's round_robin (one pick_first child per address,
// health-checked, round robin over the READY ones) with one change: a
// call's retry goes to a replica that call has not tried yet, while there
// is one. Plain round robin shares one rotation among concurrent calls, so
// a retry lands on the replica that just failed about as often as not.
const balancerName = "vncgate_round_robin"

func init() { balancer.Register(rrBuilder{}) }

type rrBuilder struct{}

func (rrBuilder) Name() string { return balancerName }

func (rrBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return &rrBalancer{Balancer: endpointsharding.NewBalancer(&avoidTried{ClientConn: cc}, opts,
		balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})}
}

type rrBalancer struct{ balancer.Balancer }

func (b *rrBalancer) UpdateClientConnState(ccs balancer.ClientConnState) error {
	// As round_robin: the pick_first children report health-checked states.
	return b.Balancer.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(ccs.ResolverState),
	})
}

// avoidTried replaces endpointsharding's picker, while some child is
// READY, with one that skips the children a call has tried.
type avoidTried struct{ balancer.ClientConn }

func (a *avoidTried) UpdateState(s balancer.State) {
	if s.ConnectivityState == connectivity.Ready {
		var ready []child
		for _, c := range endpointsharding.ChildStatesFromPicker(s.Picker) {
			if c.State.ConnectivityState == connectivity.Ready && len(c.Endpoint.Addresses) > 0 {
				ready = append(ready, child{addr: c.Endpoint.Addresses[0].Addr, picker: c.State.Picker})
			}
		}
		if len(ready) > 0 {
			s.Picker = &picker{children: ready, next: uint32(rand.IntN(len(ready)))}
		}
	}
	a.ClientConn.UpdateState(s)
}

type child struct {
	addr   string
	picker balancer.Picker
}

// picker is round robin over READY children, first among those the call
// has not tried.
type picker struct {
	children []child
	next     uint32
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	tried, _ := info.Ctx.Value(triedKey{}).(*triedSet)
	n := uint32(len(p.children))
	start := atomic.AddUint32(&p.next, 1)
	for i := range n {
		c := p.children[(start+i)%n]
		if tried.add(c.addr) {
			return c.picker.Pick(info)
		}
	}
	return p.children[start%n].picker.Pick(info)
}

// triedSet is the addresses one call's attempts were sent to.
type triedSet struct {
	mu    sync.Mutex
	addrs []string
}

type triedKey struct{}

// add records addr and reports whether it is new; a nil set (a call
// without trackTried) takes every address as new.
func (t *triedSet) add(addr string) bool {
	if t == nil {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range t.addrs {
		if a == addr {
			return false
		}
	}
	t.addrs = append(t.addrs, addr)
	return true
}

// trackTried gives each unary call the set its attempts' picks share.
func trackTried(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoke(context.WithValue(ctx, triedKey{}, &triedSet{}), method, req, reply, cc, opts...)
}
