package registration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/registry"
)

// claim reads this host's claim on uuid.
func (w *world) claim(uuid string) (registry.Location, error) {
	val, _, ok, err := w.get(registry.ComputeInstanceKey(host, uuid))
	if err != nil || !ok {
		return registry.Location{}, fmt.Errorf("claim of %s: got none (%v)", uuid, err)
	}
	var loc registry.Location
	if err := json.Unmarshal([]byte(val), &loc); err != nil {
		return registry.Location{}, fmt.Errorf("claim of %s: %q: %v", uuid, val, err)
	}
	return loc, nil
}

// vouches checks that the claim on uuid holds the console port (0: no
// console, with a reason) under lease.
func vouches(loc registry.Location, lease int64, port int32) error {
	switch {
	case loc.Lease != lease:
		return fmt.Errorf("claim under lease %d, want %d", loc.Lease, lease)
	case port == 0 && (loc.Console != nil || loc.NoConsole == ""):
		return fmt.Errorf("claim: console %+v, no-console reason %q; want no console and a reason", loc.Console, loc.NoConsole)
	case port != 0 && (loc.Console == nil || loc.Console.Port != port || loc.NoConsole != ""):
		return fmt.Errorf("claim: console %+v, no-console reason %q; want port %d", loc.Console, loc.NoConsole, port)
	}
	return nil
}

func TestClaimsPublishConsolesUnderTheLease(t *testing.T) {
	w := newWorld(t, inventoryAB)
	w.startAgent(t)
	var lease int64
	eventually(t, 10*time.Second, "registration", func() (err error) { lease, err = w.registered(); return err })
	eventually(t, 10*time.Second, "consoles published", func() error {
		a, err := w.claim(uuidA)
		if err != nil {
			return err
		}
		if err := vouches(a, lease, 5901); err != nil {
			return fmt.Errorf("A: %w", err)
		}
		if a.Console.Host != "127.0.0.1" {
			return fmt.Errorf("A: console host %q, want 127.0.0.1", a.Console.Host)
		}
		b, err := w.claim(uuidB)
		if err != nil {
			return err
		}
		if err := vouches(b, lease, 0); err != nil {
			return fmt.Errorf("B (stopped): %w", err)
		}
		if !strings.Contains(b.NoConsole, "not running") {
			return fmt.Errorf("B: reason %q, want it to say the instance is not running", b.NoConsole)
		}
		return nil
	})

	// A new registration (the lease lost behind the agent's back) vouches
	// anew: every claim is rewritten under the new lease.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.cli.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "claims under the new lease", func() error {
		now, err := w.registered()
		if err != nil {
			return err
		}
		if now == lease {
			return fmt.Errorf("still on the revoked lease")
		}
		a, err := w.claim(uuidA)
		if err != nil {
			return err
		}
		return vouches(a, now, 5901)
	})
}

// claimReader is a Revoker that reads the instance's claim when it is
// called: what a token check answered from the claim would see once the
// revocation is under way.
type claimReader struct {
	w     *world
	mu    sync.Mutex
	seen  map[string]registry.Location
	calls map[string]string // uuid -> reason
}

func (r *claimReader) RevokeInstanceTokens(_ context.Context, uuid, reason string) error {
	loc, err := r.w.claim(uuid)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.seen[uuid] = loc
	}
	r.calls[uuid] = reason
	return nil
}

func (r *claimReader) at(uuid string) (registry.Location, string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reason, ok := r.calls[uuid]
	return r.seen[uuid], reason, ok
}

// TestClaimChangesBeforeRevocation: when a console moves or an instance
// stops, its claim says so before the agent asks consoleauth to revoke its
// tokens, so consoleauth never vouches for the old console from the claim
// once tokens are being revoked.
func TestClaimChangesBeforeRevocation(t *testing.T) {
	w := newWorld(t, `{"instances": [
		{"uuid": "`+uuidA+`", "vnc_port": 5901},
		{"uuid": "`+uuidD+`", "vnc_port": 5904}
	]}`)
	r := &claimReader{w: w, seen: map[string]registry.Location{}, calls: map[string]string{}}
	w.revokerOverride = r
	w.startAgent(t)
	var lease int64
	eventually(t, 10*time.Second, "registration", func() (err error) { lease, err = w.registered(); return err })
	eventually(t, 10*time.Second, "publication", func() error {
		a, err := w.claim(uuidA)
		if err != nil {
			return err
		}
		return vouches(a, lease, 5901)
	})

	w.writeInventory(t, `{"instances": [
		{"uuid": "`+uuidA+`", "vnc_port": 5911},
		{"uuid": "`+uuidD+`", "vnc_port": 5904, "state": "stopped"}
	]}`)
	for _, tc := range []struct {
		uuid, reason string
		port         int32
	}{{uuidA, "console", 5911}, {uuidD, "stopped", 0}} {
		eventually(t, 10*time.Second, "revocation of "+tc.uuid, func() error {
			if _, _, ok := r.at(tc.uuid); !ok {
				return fmt.Errorf("not revoked yet")
			}
			return nil
		})
		loc, reason, _ := r.at(tc.uuid)
		if reason != tc.reason {
			t.Errorf("revocation of %s: reason %q, want %q", tc.uuid, reason, tc.reason)
		}
		if err := vouches(loc, lease, tc.port); err != nil {
			t.Errorf("claim of %s when its revocation was sent: %v", tc.uuid, err)
		}
	}
}
