package registration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/static"
	"github.com/vncgate/vncgate/testkit/etcd"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	host  = "compute-1"
	addr  = "127.0.0.1:16092"
	ttl   = 2 * time.Second // etcd's smallest lease TTL with default timing
	uuidA = "aaaaaaaa-0000-0000-0000-000000000001"
	uuidB = "bbbbbbbb-0000-0000-0000-000000000002"
	uuidC = "cccccccc-0000-0000-0000-000000000003"
	uuidD = "dddddddd-0000-0000-0000-000000000004"
	uuidX = "eeeeeeee-0000-0000-0000-000000000005" // published by this host before, gone
	uuidY = "ffffffff-0000-0000-0000-000000000006" // published before, now on another host
)

func startEtcd(t *testing.T) *etcd.Server {
	t.Helper()
	return etcd.New(t, "127.0.0.1:0")
}

func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(etcdclient.Config([]string{endpoint}, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// recorder is a Revoker that remembers its calls.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

type call struct{ uuid, reason string }

func (r *recorder) RevokeInstanceTokens(_ context.Context, uuid, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{uuid: uuid, reason: reason})
	return nil
}

func (r *recorder) uuids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, c := range r.calls {
		ids = append(ids, c.uuid)
	}
	slices.Sort(ids)
	return ids
}

type world struct {
	etcd      *etcd.Server
	cli       *clientv3.Client // the test's own view of etcd
	inventory string
	driver    *static.Driver
	revoker   *recorder
	// revokerOverride, when set, is the agent's Revoker instead.
	revokerOverride Revoker
}

func newWorld(t *testing.T, inventory string) *world {
	t.Helper()
	w := &world{etcd: startEtcd(t), revoker: &recorder{}}
	w.cli = newClient(t, w.etcd.Endpoint)
	w.inventory = filepath.Join(t.TempDir(), "inventory.json")
	w.writeInventory(t, inventory)
	d, err := static.Open(w.inventory, static.Options{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.driver = d
	return w
}

func (w *world) writeInventory(t *testing.T, data string) {
	t.Helper()
	tmp := w.inventory + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, w.inventory); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs an agent on its own etcd client until the test ends. It
// returns the client (to close as a dying process would) and a stop
// function that cancels the agent and waits for Run to return.
func (w *world) startAgent(t *testing.T) (*clientv3.Client, func() error) {
	t.Helper()
	cli := newClient(t, w.etcd.Endpoint)
	return cli, w.startAgentOn(t, cli)
}

// startAgentOn runs an agent on cli until the test ends and returns a stop
// function that cancels the agent and waits for Run to return.
func (w *world) startAgentOn(t *testing.T, cli *clientv3.Client) func() error {
	t.Helper()
	var rev Revoker = w.revoker
	if w.revokerOverride != nil {
		rev = w.revokerOverride
	}
	a, err := New(Config{
		Client: cli, Host: host, Address: addr, TTL: ttl, Driver: w.driver, Revoker: rev,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		ResyncInterval: 200 * time.Millisecond,
		MinBackoff:     50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, OpTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	driverDone := make(chan struct{})
	go func() { defer close(driverDone); w.driver.Run(ctx) }()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				runErr = errors.New("Run did not return 10s after cancel")
			}
			<-driverDone
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// eventually retries check every 20ms until it returns nil or timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *world) get(key string) (string, int64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := w.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return "", 0, false, err
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease, true, nil
}

func (w *world) put(t *testing.T, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.cli.Put(ctx, key, val); err != nil {
		t.Fatal(err)
	}
}

func locationOf(host string) string {
	b, _ := json.Marshal(registry.Location{ComputeHost: host})
	return string(b)
}

// registered checks the compute key holds the address on a live lease and
// returns that lease.
func (w *world) registered() (int64, error) {
	val, lease, ok, err := w.get(registry.ComputeKey(host))
	if err != nil || !ok {
		return 0, fmt.Errorf("compute key: got none (%v), want one", err)
	}
	var c registry.Compute
	if err := json.Unmarshal([]byte(val), &c); err != nil || c.Address != addr {
		return 0, fmt.Errorf("compute key: got %q, want address %s", val, addr)
	}
	if lease == 0 {
		return 0, errors.New("compute key has no lease")
	}
	return lease, nil
}

// published checks that want holds a claim on each uuid (with its
// Location as the value, on no lease) and that this host holds none when
// want is another host or empty.
func (w *world) published(want string, uuids ...string) error {
	for _, id := range uuids {
		if want != "" {
			loc, lease, ok, err := w.get(registry.ComputeInstanceKey(want, id))
			if err != nil {
				return err
			}
			var l registry.Location
			if ok {
				if err := json.Unmarshal([]byte(loc), &l); err != nil {
					return fmt.Errorf("claim of %s by %s: %q: %v", id, want, loc, err)
				}
			}
			if !ok || l.ComputeHost != want || lease != 0 {
				return fmt.Errorf("claim of %s by %s: got %q (present %v, lease %d), want a Location naming %s on no lease", id, want, loc, ok, lease, want)
			}
		}
		if want != host {
			_, _, ok, err := w.get(registry.ComputeInstanceKey(host, id))
			if err != nil {
				return err
			}
			if ok {
				return fmt.Errorf("claim of %s by %s: present, want none", id, host)
			}
		}
	}
	return nil
}

const inventoryAB = `{"instances": [
	{"uuid": "` + uuidA + `", "vnc_host": "127.0.0.1", "vnc_port": 5901},
	{"uuid": "` + uuidB + `", "vnc_host": "127.0.0.1", "vnc_port": 5902, "state": "stopped"}
]}`

func TestRegisterPublishesAndPrunes(t *testing.T) {
	w := newWorld(t, inventoryAB)
	// What an earlier run of this agent left: X is gone from this host; Y
	// moved to compute-2, whose agent claimed it since.
	w.put(t, registry.ComputeInstanceKey(host, uuidX), locationOf(host))
	w.put(t, registry.ComputeInstanceKey(host, uuidY), locationOf(host))
	w.put(t, registry.ComputeInstanceKey("compute-2", uuidY), locationOf("compute-2"))

	w.startAgent(t)
	eventually(t, 10*time.Second, "registration", func() error { _, err := w.registered(); return err })
	eventually(t, 10*time.Second, "publication", func() error {
		if err := w.published(host, uuidA, uuidB); err != nil {
			return err
		}
		if err := w.published("", uuidX); err != nil {
			return err
		}
		return w.published("compute-2", uuidY)
	})

	lease, _ := w.registered()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	live, err := w.cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil || live.GrantedTTL != int64(ttl/time.Second) {
		t.Errorf("lease: got granted TTL %v (%v), want %v", live.GrantedTTL, err, int64(ttl/time.Second))
	}
	if got := w.revoker.uuids(); len(got) != 0 {
		t.Errorf("revocations: got %v, want none", got)
	}
}

func TestInventoryChangeRepublishesAndRevokes(t *testing.T) {
	w := newWorld(t, `{"instances": [
		{"uuid": "`+uuidA+`", "vnc_port": 5901},
		{"uuid": "`+uuidB+`", "vnc_port": 5902},
		{"uuid": "`+uuidD+`", "vnc_port": 5904}
	]}`)
	w.startAgent(t)
	eventually(t, 10*time.Second, "publication", func() error { return w.published(host, uuidA, uuidB, uuidD) })

	// A leaves, B's console moves, C arrives, D stops.
	w.writeInventory(t, `{"instances": [
		{"uuid": "`+uuidB+`", "vnc_port": 5912},
		{"uuid": "`+uuidC+`", "vnc_port": 5903},
		{"uuid": "`+uuidD+`", "vnc_port": 5904, "state": "stopped"}
	]}`)
	eventually(t, 10*time.Second, "republication", func() error {
		if err := w.published(host, uuidB, uuidC, uuidD); err != nil {
			return err
		}
		return w.published("", uuidA)
	})
	eventually(t, 10*time.Second, "revocations", func() error {
		if got, want := w.revoker.uuids(), []string{uuidA, uuidB, uuidD}; !slices.Equal(got, want) {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
	for _, c := range w.revoker.calls {
		if _, ok := registry.RevocationSentence(c.reason); !ok || c.reason == "" {
			t.Errorf("revocation of %s: reason %q, want a code of registry.RevocationReasons", c.uuid, c.reason)
		}
	}
}

// TestResyncRepairsDrift deletes a claim and changes another behind the
// agent's back: the periodic resync writes them again.
func TestResyncRepairsDrift(t *testing.T) {
	w := newWorld(t, inventoryAB)
	w.startAgent(t)
	eventually(t, 10*time.Second, "publication", func() error { return w.published(host, uuidA, uuidB) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := w.cli.Get(ctx, registry.ComputeInstanceKey(host, uuidB))
	if err != nil {
		t.Fatal(err)
	}
	before := resp.Kvs[0].ModRevision
	if _, err := w.cli.Delete(ctx, registry.ComputeInstanceKey(host, uuidA)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "repair", func() error { return w.published(host, uuidA) })
	resp, err = w.cli.Get(ctx, registry.ComputeInstanceKey(host, uuidB))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Kvs[0].ModRevision != before {
		t.Errorf("claim of B: rewritten by a resync (revision %d, was %d), want left alone", resp.Kvs[0].ModRevision, before)
	}
}

func TestStopDeregisters(t *testing.T) {
	w := newWorld(t, inventoryAB)
	_, stop := w.startAgent(t)
	eventually(t, 10*time.Second, "publication", func() error {
		if _, err := w.registered(); err != nil {
			return err
		}
		return w.published(host, uuidA, uuidB)
	})
	if err := stop(); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
	eventually(t, ttl, "compute key removal", func() error {
		if _, _, ok, err := w.get(registry.ComputeKey(host)); ok || err != nil {
			return fmt.Errorf("compute key still there (%v)", err)
		}
		return nil
	})
	// The instances still exist: their claims stay.
	if err := w.published(host, uuidA, uuidB); err != nil {
		t.Error(err)
	}
	if got := w.revoker.uuids(); len(got) != 0 {
		t.Errorf("revocations on stop: got %v, want none", got)
	}
}

// TestDeadAgentExpires closes the agent's etcd connection without any
// cleanup, as when the process dies: the lease must lapse within its TTL.
func TestDeadAgentExpires(t *testing.T) {
	w := newWorld(t, inventoryAB)
	cli, stop := w.startAgent(t)
	eventually(t, 10*time.Second, "registration", func() error { _, err := w.registered(); return err })
	cli.Close()
	dead := time.Now()
	eventually(t, ttl+2*time.Second, "lease expiry", func() error {
		if _, _, ok, err := w.get(registry.ComputeKey(host)); ok || err != nil {
			return fmt.Errorf("compute key still there (%v)", err)
		}
		return nil
	})
	t.Logf("compute key gone %v after the agent's connection closed (TTL %v)", time.Since(dead).Round(10*time.Millisecond), ttl)
	if err := stop(); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

// TestReregistersAfterLeaseLoss revokes the agent's lease behind its back.
func TestReregistersAfterLeaseLoss(t *testing.T) {
	w := newWorld(t, inventoryAB)
	w.startAgent(t)
	var first int64
	eventually(t, 10*time.Second, "registration", func() (err error) { first, err = w.registered(); return err })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.cli.Revoke(ctx, clientv3.LeaseID(first)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "registration again", func() error {
		lease, err := w.registered()
		if err == nil && lease == first {
			return errors.New("still on the revoked lease")
		}
		return err
	})
}

// TestReregistersAfterEtcdRestart stops etcd for longer than the TTL, so
// the agent's keep-alive lapses, and starts it again.
func TestReregistersAfterEtcdRestart(t *testing.T) {
	w := newWorld(t, inventoryAB)
	w.startAgent(t)
	var first int64
	eventually(t, 10*time.Second, "registration", func() (err error) { first, err = w.registered(); return err })
	eventually(t, 10*time.Second, "publication", func() error { return w.published(host, uuidA, uuidB) })

	w.etcd.Stop()
	time.Sleep(ttl + time.Second)
	restartAt := time.Now()
	if err := w.etcd.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd restart took %v", time.Since(restartAt))
	var second int64
	eventually(t, 15*time.Second, "registration after restart", func() error {
		lease, err := w.registered()
		if err == nil && lease == first {
			return errors.New("still on the lease from before the outage")
		}
		second = lease
		return err
	})
	t.Logf("agent registered again %v after the restart began", time.Since(restartAt).Round(10*time.Millisecond))
	// The old lease is gone (the agent revokes it, else it lapses); the key
	// stays on the new one.
	time.Sleep(ttl + time.Second)
	if lease, err := w.registered(); err != nil || lease != second {
		t.Errorf("after the old lease's TTL: got lease %d (%v), want %d", lease, err, second)
	}
	if err := w.published(host, uuidA, uuidB); err != nil {
		t.Error(err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	cli := &clientv3.Client{}
	d := &static.Driver{}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no client", Config{Host: host, Address: addr, Driver: d}},
		{"no driver", Config{Client: cli, Host: host, Address: addr}},
		{"no host", Config{Client: cli, Address: addr, Driver: d}},
		{"host with slash", Config{Client: cli, Host: "a/b", Address: addr, Driver: d}},
		{"no address", Config{Client: cli, Host: host, Driver: d}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Error("got no error, want one")
			}
		})
	}
}
