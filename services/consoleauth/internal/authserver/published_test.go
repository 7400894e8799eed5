package authserver

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
)

const vm4 = "0a1b2c3d-0000-4000-8000-00000000000d" // published by h4, then moved to h5

// publishingAgent is a compute agent as the real one runs: registered on
// a lease it keeps alive, publishing its instance's console in its claim
// under that lease. It counts the calls it gets.
type publishingAgent struct {
	computeagentv1.UnimplementedComputeAgentServiceServer
	host  string
	lease clientv3.LeaseID

	mu      sync.Mutex
	console registry.LocationConsole

	gets, validations atomic.Int32
}

func startPublishingAgent(t *testing.T, w *world, host string) *publishingAgent {
	t.Helper()
	ctx := testworld.Ctx(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	a := &publishingAgent{host: host}
	computeagentv1.RegisterComputeAgentServiceServer(srv, a)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	lease, err := w.cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	a.lease = lease.ID
	kctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := w.cli.KeepAlive(kctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	testworld.PutJSON(t, w.cli, registry.ComputeKey(host), registry.Compute{Address: l.Addr().String()})
	// PutJSON writes no lease: put the registration on the agent's.
	resp, err := w.cli.Get(ctx, registry.ComputeKey(host))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.cli.Put(ctx, registry.ComputeKey(host), string(resp.Kvs[0].Value), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	return a
}

// publish sets the instance's console and publishes it, as the agent does
// before acting on a change.
func (a *publishingAgent) publish(t *testing.T, w *world, uuid string, c registry.LocationConsole) {
	t.Helper()
	a.mu.Lock()
	a.console = c
	a.mu.Unlock()
	testworld.PutJSON(t, w.cli, registry.ComputeInstanceKey(a.host, uuid),
		registry.Location{ComputeHost: a.host, Lease: int64(a.lease), Console: &c})
}

func (a *publishingAgent) GetConsole(context.Context, *computeagentv1.GetConsoleRequest) (*computeagentv1.GetConsoleResponse, error) {
	a.gets.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	return &computeagentv1.GetConsoleResponse{Host: a.console.Host, Port: a.console.Port}, nil
}

func (a *publishingAgent) ValidateConsolePort(_ context.Context, req *computeagentv1.ValidateConsolePortRequest) (*computeagentv1.ValidateConsolePortResponse, error) {
	a.validations.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	if reason := a.console.Mismatch(req.GetHost(), req.GetPort()); reason != "" {
		return &computeagentv1.ValidateConsolePortResponse{Reason: reason}, nil
	}
	return &computeagentv1.ValidateConsolePortResponse{Valid: true}, nil
}

func (a *publishingAgent) calls() int32 { return a.gets.Load() + a.validations.Load() }

// awaitVouched waits until consoleauth's index vouches for host's console
// c of uuid: the watch delivered the claim.
func awaitVouched(t *testing.T, w *world, uuid, host string, c registry.LocationConsole) {
	t.Helper()
	ctx := testworld.Ctx(t)
	for {
		a, err := w.store.Locate(ctx, uuid)
		if err == nil && a.Vouched && a.ComputeHost == host && a.Console == c {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("index never vouched for %s on %s at %+v: last %+v, %v", uuid, host, c, a, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// publishedWorld is the world with h4 running vm4, published in its claim
// and vouched for by consoleauth's index.
func publishedWorld(t *testing.T) (*world, *publishingAgent, registry.LocationConsole) {
	t.Helper()
	w := newWorld(t)
	h4 := startPublishingAgent(t, w, "h4")
	c := registry.LocationConsole{Host: "10.0.0.4", Port: 5904}
	h4.publish(t, w, vm4, c)
	awaitVouched(t, w, vm4, "h4", c)
	return w, h4, c
}

func check(ctx context.Context, w *world, token string) (*consoleauthv1.CheckTokenResponse, error) {
	return w.client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: TypeNoVNC})
}

// TestChecksFromPublishedClaims: while the index follows etcd, a mint and a
// token check take the agent's answer from its claim and call no agent; a
// port change or a move the agent published makes the check refuse the old
// host and port (FAILED_PRECONDITION); a claim that does not vouch (older
// format) sends the check to the agent again; a revocation still ends the
// token.
func TestChecksFromPublishedClaims(t *testing.T) {
	w, h4, first := publishedWorld(t)
	ctx := testworld.Ctx(t)

	token := w.mint(t, vm4)
	resp, err := check(ctx, w, token)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if got := resp.GetConnectInfo(); got.GetHost() != first.Host || got.GetPort() != first.Port || got.GetComputeHost() != "h4" {
		t.Errorf("connect info: got %s:%d on %s, want %s:%d on h4", got.GetHost(), got.GetPort(), got.GetComputeHost(), first.Host, first.Port)
	}
	if n := h4.calls(); n != 0 {
		t.Errorf("agent calls for a mint and a check from a vouching claim: got %d, want 0", n)
	}

	// The console moves to another port; the agent publishes it.
	moved := registry.LocationConsole{Host: "10.0.0.4", Port: 5914}
	h4.publish(t, w, vm4, moved)
	awaitVouched(t, w, vm4, "h4", moved)
	_, err = check(ctx, w, token)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "port 5904") {
		t.Errorf("check of the old port: got %v, want FailedPrecondition naming port 5904", err)
	}
	if n := h4.calls(); n != 0 {
		t.Errorf("agent calls after the port change: got %d, want 0", n)
	}

	// The instance migrates to h5: the source unpublishes, the destination
	// publishes its console.
	token = w.mint(t, vm4)
	h5 := startPublishingAgent(t, w, "h5")
	if _, err := w.cli.Delete(ctx, registry.ComputeInstanceKey("h4", vm4)); err != nil {
		t.Fatal(err)
	}
	there := registry.LocationConsole{Host: "10.0.0.5", Port: 5914}
	h5.publish(t, w, vm4, there)
	awaitVouched(t, w, vm4, "h5", there)
	_, err = check(ctx, w, token)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "10.0.0.4") {
		t.Errorf("check of the console left behind: got %v, want FailedPrecondition naming host 10.0.0.4", err)
	}
	if n := h4.calls() + h5.calls(); n != 0 {
		t.Errorf("agent calls after the move: got %d, want 0", n)
	}

	// A claim of the older format vouches for nothing: the agent is asked.
	token = w.mint(t, vm4)
	testworld.PutJSON(t, w.cli, registry.ComputeInstanceKey("h5", vm4), registry.Location{ComputeHost: "h5"})
	for {
		a, err := w.store.Locate(ctx, vm4)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Vouched {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := check(ctx, w, token); err != nil {
		t.Fatalf("check through the agent: %v", err)
	}
	if n := h5.validations.Load(); n != 1 {
		t.Errorf("agent validations for a claim that does not vouch: got %d, want 1", n)
	}

	// A revocation still ends the token.
	if _, err := w.srv.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: vm4}); err != nil {
		t.Fatal(err)
	}
	if _, err := check(ctx, w, token); status.Code(err) != codes.NotFound {
		t.Errorf("check after the revocation: got %v, want NotFound", err)
	}
}

// TestMintFromAChangedClaim: a claim that changes between the index's read
// and the mint's write makes the mint ask etcd and the agent, and the token
// carries the agent's answer, not the claim's.
func TestMintFromAChangedClaim(t *testing.T) {
	w, h4, published := publishedWorld(t)
	ctx := testworld.Ctx(t)
	agent, err := w.store.Locate(ctx, vm4)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's console moves, and it rewrites its claim: the mint below
	// still holds what the index read before.
	h4.publish(t, w, vm4, registry.LocationConsole{Host: "10.0.0.4", Port: 5924})
	rec := registry.Token{InstanceUUID: vm4, ConsoleType: TypeNoVNC, ComputeHost: "h4", Host: published.Host, Port: published.Port}
	if _, err := w.store.MintFromClaim(ctx, agent, rec); err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("mint from a claim that changed: got %v, want ErrClaimChanged", err)
	}
	minted, _, err := w.srv.mint(ctx, registry.Token{InstanceUUID: vm4, ConsoleType: TypeNoVNC})
	if err != nil {
		t.Fatal(err)
	}
	if minted.Record.Port != 5924 {
		t.Errorf("minted for port %d, want 5924", minted.Record.Port)
	}
}
