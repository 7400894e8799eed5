package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/compute-agent/internal/revoker"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// consoleauth answers RevokeInstanceTokens on a gRPC server that starts
// when the test says so, and records what it was asked.
type consoleauth struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	addr string

	mu  sync.Mutex
	got []call
}

func (c *consoleauth) RevokeInstanceTokens(_ context.Context, req *consoleauthv1.RevokeInstanceTokensRequest) (*consoleauthv1.RevokeInstanceTokensResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, call{uuid: req.GetInstanceUuid(), reason: req.GetReason()})
	return &consoleauthv1.RevokeInstanceTokensResponse{}, nil
}

func (c *consoleauth) calls() []call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]call(nil), c.got...)
}

// start serves on the address the agent has been failing to reach.
func (c *consoleauth) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	consoleauthv1.RegisterConsoleAuthServiceServer(gs, c)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
}

// counting counts the attempts per instance of the Revoker it wraps.
type counting struct {
	Revoker
	mu       sync.Mutex
	attempts map[string]int
}

func (c *counting) RevokeInstanceTokens(ctx context.Context, uuid, reason string) error {
	c.mu.Lock()
	c.attempts[uuid]++
	c.mu.Unlock()
	return c.Revoker.RevokeInstanceTokens(ctx, uuid, reason)
}

func (c *counting) of(uuid string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts[uuid]
}

// TestRevocationsSurviveConsoleauthDown: consoleauth is down for many more
// attempts than the agent used to make; the agent keeps the instance that
// left claimed (its revocation needs the claim), coalesces an instance's
// events into one revocation, and once consoleauth is up every revocation
// lands, then the instance that left is unpublished.
func TestRevocationsSurviveConsoleauthDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := &consoleauth{addr: l.Addr().String()}
	l.Close() // down: connections are refused
	conn, err := grpc.NewClient(ca.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rev := &counting{
		Revoker:  revoker.New(consoleauthv1.NewConsoleAuthServiceClient(conn), slog.New(slog.DiscardHandler), nil),
		attempts: map[string]int{},
	}

	w := newWorld(t, inventoryAB)
	w.revokerOverride = rev
	w.startAgent(t)
	eventually(t, 10*time.Second, "publication", func() error { return w.published(host, uuidA, uuidB) })

	// A's console moves, then A stops (two events, one revocation); B
	// leaves this host.
	w.writeInventory(t, `{"instances": [{"uuid": "`+uuidA+`", "vnc_host": "127.0.0.1", "vnc_port": 5911}]}`)
	eventually(t, 10*time.Second, "first attempt for A", func() error {
		if rev.of(uuidA) == 0 {
			return fmt.Errorf("no attempt yet")
		}
		return nil
	})
	w.writeInventory(t, `{"instances": [{"uuid": "`+uuidA+`", "vnc_host": "127.0.0.1", "vnc_port": 5911, "state": "stopped"}]}`)

	const many = 8 // the agent used to give up after 5
	eventually(t, 30*time.Second, "attempts while consoleauth is down", func() error {
		if a, b := rev.of(uuidA), rev.of(uuidB); a < many || b < many {
			return fmt.Errorf("attempts: A %d, B %d, want %d each", a, b, many)
		}
		return nil
	})
	// Resyncs ran all along (every 200 ms): B's claim is still there.
	if err := w.published(host, uuidB); err != nil {
		t.Fatalf("B before its revocation landed: %v", err)
	}

	ca.start(t)
	eventually(t, 30*time.Second, "revocations once consoleauth is up", func() error {
		got := ca.calls()
		want := []call{{uuidA, "stopped"}, {uuidB, "migrated"}}
		if len(got) < len(want) {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		for _, c := range want {
			n := 0
			for _, g := range got {
				if g == c {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("got %v, want %v once each", got, want)
			}
		}
		if len(got) != len(want) {
			return fmt.Errorf("got %v, want only %v", got, want)
		}
		return nil
	})
	eventually(t, 10*time.Second, "B unpublished after its revocation", func() error { return w.published("", uuidB) })
	if err := w.published(host, uuidA); err != nil {
		t.Errorf("A (stopped, still here): %v", err)
	}
}

func TestRevocationQueue(t *testing.T) {
	const a, b, c = "a", "b", "c"
	q := newRevocationQueue(2)
	now := time.Now()
	if !q.add(a, "console", false) || !q.add(b, "migrated", true) {
		t.Fatal("add: refused below the bound")
	}
	if q.add(c, "stopped", false) {
		t.Error("add: accepted beyond the bound")
	}
	if !q.add(a, "stopped", false) {
		t.Error("add: an instance already pending was refused when full")
	}
	if !q.holdsClaim(b) || q.holdsClaim(a) {
		t.Error("holdsClaim: want b only")
	}

	// An attempt fails: the entry waits; a newer event meanwhile makes the
	// failure stale and the entry due at once.
	r, wait, ok := q.next(now)
	if !ok || wait > 0 {
		t.Fatalf("next: got %+v, %v, %v, want one due now", r, wait, ok)
	}
	q.failed(r, now.Add(time.Minute))
	r2, wait, _ := q.next(now)
	if r2.uuid == r.uuid || wait > 0 {
		t.Fatalf("next after a failure: got %s in %v, want the other one, due now", r2.uuid, wait)
	}
	q.failed(r2, now.Add(2*time.Minute))
	if r3, wait, _ := q.next(now); r3.uuid != r.uuid || wait != time.Minute || r3.attempt != 1 {
		t.Fatalf("next: got %s in %v (attempt %d), want %s in 1m, attempt 1", r3.uuid, wait, r3.attempt, r.uuid)
	}

	// b comes back to this host: its revocation still goes, without the
	// unpublish.
	q.runsHere(b)
	if q.holdsClaim(b) {
		t.Error("holdsClaim after runsHere: got true")
	}
	pb, _, _ := q.next(now.Add(3 * time.Minute))
	for pb.uuid != b {
		q.succeeded(pb)
		pb, _, _ = q.next(now.Add(3 * time.Minute))
	}
	if q.succeeded(pb) {
		t.Error("succeeded: asked to unpublish an instance that runs here again")
	}

	q.add(a, "stopped", true)
	pa, _, _ := q.next(now)
	q.add(a, "deleted", true) // while the attempt is in flight
	if q.succeeded(pa) {
		t.Error("succeeded: a stale attempt removed a newer event")
	}
	pa, wait, _ = q.next(now)
	if pa.reason != "deleted" || wait > 0 {
		t.Fatalf("after a stale success: got %+v in %v, want deleted, due now", pa, wait)
	}
	if !q.succeeded(pa) || q.len() != 0 {
		t.Errorf("final success: want unpublish and an empty queue, got %d left", q.len())
	}
}

// TestAgentUnderItsRole runs the agent as its host's etcd user with
// authentication on (deploy/cmd/etcd-roles' plan): it registers,
// publishes, prunes and deregisters with nothing but its own keys, and its
// user cannot touch another host's.
func TestAgentUnderItsRole(t *testing.T) {
	srv := etcd.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	root := srv.ClientAs(t, "root")
	if err := (etcdclient.Roles{ComputeHosts: []string{host, "compute-2"}}).Apply(ctx, root); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, inventoryAB)
	w.cli = root // the test's view
	mine := srv.ClientAs(t, host)
	// Left from an earlier run: a claim to prune.
	if _, err := mine.Put(ctx, registry.ComputeInstanceKey(host, uuidX), locationOf(host)); err != nil {
		t.Fatal(err)
	}
	stop := w.startAgentOn(t, mine)
	eventually(t, 10*time.Second, "registration and publication", func() error {
		if _, err := w.registered(); err != nil {
			return err
		}
		if err := w.published(host, uuidA, uuidB); err != nil {
			return err
		}
		return w.published("", uuidX)
	})
	if _, err := mine.Put(ctx, registry.ComputeInstanceKey("compute-2", uuidC), locationOf(host)); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("claiming for another host: got %v, want permission denied", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The lease was revoked, by the agent's own user: the key is gone now.
	if _, _, ok, err := w.get(registry.ComputeKey(host)); ok || err != nil {
		t.Errorf("compute key after stop: present %v (%v), want gone", ok, err)
	}
}

// refusing answers every revocation with INVALID_ARGUMENT.
type refusing struct{ counting }

func (r *refusing) RevokeInstanceTokens(_ context.Context, uuid, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts[uuid]++
	return fmt.Errorf("revoke tokens of instance %s: %w", uuid, status.Error(codes.InvalidArgument, "unknown reason"))
}

// TestMalformedRevocationIsNotRetried: a request consoleauth refuses as
// malformed would be refused for ever; it is dropped, and the instance that
// left is unpublished anyway.
func TestMalformedRevocationIsNotRetried(t *testing.T) {
	rev := &refusing{counting{attempts: map[string]int{}}}
	w := newWorld(t, inventoryAB)
	w.revokerOverride = rev
	w.startAgent(t)
	eventually(t, 10*time.Second, "publication", func() error { return w.published(host, uuidA, uuidB) })
	w.writeInventory(t, `{"instances": [{"uuid": "`+uuidA+`", "vnc_host": "127.0.0.1", "vnc_port": 5901}]}`)
	eventually(t, 10*time.Second, "B unpublished", func() error { return w.published("", uuidB) })
	if n := rev.of(uuidB); n != 1 {
		t.Errorf("attempts: got %d, want 1", n)
	}
}
