package devstack_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
)

// TestReplicatedWorld starts the production-shaped world (3 etcd members,
// two replicas of consoleauth and of each proxy, HAProxy in front): console
// URLs come through HAProxy and name it, every replica has its own
// process, log and HAProxy server; a killed consoleauth replica goes down
// in HAProxy while URLs still come, and is up again once restarted; the
// etcd cluster names a running leader; an added agent registers under its
// own host.
func TestReplicatedWorld(t *testing.T) {
	w := devstacktest.Start(t, devstack.Options{EtcdMembers: 3, Replicas: 2, LB: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, service := range []string{devstack.ConsoleAuth, devstack.NoVNCProxy, devstack.XVPProxy} {
		ps := w.Processes(service)
		if len(ps) != 2 || ps[0].Name != service+"-1" || ps[1].Name != service+"-2" {
			t.Fatalf("%s: got %d processes %v, want %s-1 and %s-2", service, len(ps), ps, service, service)
		}
		for _, p := range ps {
			if !p.Running() {
				t.Errorf("%s does not run", p.Name)
			}
			if state, err := w.HAProxy.ServerState(strings.Split(devstack.LBServer(p), "/")[0], p.Name); state != "UP" {
				t.Errorf("haproxy %s: got %q (%v), want UP", devstack.LBServer(p), state, err)
			}
		}
	}
	u, err := w.ConsoleURL(ctx, devstack.DemoUUID, "novnc")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, w.NoVNCBaseURL()) || !strings.Contains(w.NoVNCBaseURL(), w.Addr(w.Ports.NoVNC)) {
		t.Errorf("console URL %s: want HAProxy's %s", u, w.NoVNCBaseURL())
	}
	leader, err := w.EtcdLeader(ctx)
	if err != nil || !w.EtcdCluster.Running(leader) {
		t.Fatalf("etcd leader: %d, %v", leader, err)
	}

	ca := w.Process(devstack.ConsoleAuth + "-1")
	ca.Kill()
	if err := w.WaitLB(ctx, "rest", ca.Name, false); err != nil {
		t.Fatal(err)
	}
	for range 4 { // round robin: both servers' turns
		if _, err := w.ConsoleURL(ctx, devstack.DemoUUID, "xvpvnc"); err != nil {
			t.Fatalf("with %s killed: %v", ca.Name, err)
		}
	}
	if err := ca.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitLB(ctx, "rest", ca.Name, true); err != nil {
		t.Fatal(err)
	}
	resp, err := w.HTTPClient().Get("http://" + w.AdminAddr(ca.Ports.ConsoleAuthAdmin) + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("restarted %s /readyz: %s", ca.Name, resp.Status)
	}

	inventory := filepath.Join(t.TempDir(), "inventory.json")
	if err := os.WriteFile(inventory, []byte(`{"instances": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	agent, err := w.AddAgent(ctx, "second-host", "--driver=static", "--inventory_file="+inventory)
	if err != nil {
		t.Fatal(err)
	}
	if agent.Name != "compute-agent-second-host" || w.Process(agent.Name) != agent || !agent.Running() {
		t.Errorf("added agent %q: want compute-agent-second-host, running", agent.Name)
	}
	if _, err := w.AddAgent(ctx, "second-host"); err == nil {
		t.Error("adding a second agent for one host: got nil error, want one")
	}
}
