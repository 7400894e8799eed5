package bench

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/registry"
	testetcd "github.com/vncgate/vncgate/testkit/etcd"
)

// clusterMembers is the size of the etcd cluster of the mint-rate rows
// beside the single embedded member.
const clusterMembers = 3

// benchMintCluster measures the mint rate as benchMint does, with
// consoleauth and the compute agent on a 3-member etcd cluster (each member
// a process of its own, testkit/etcd) instead of devstack's single embedded
// member; the baseline's transactions go to the same cluster.
func benchMintCluster(b *testing.B) *mintResult {
	_, cli := testetcd.StartCluster(b, clusterMembers)
	w := startClusterStack(b, cli)
	res := measureMint(b, w, cli)
	b.ReportMetric(res.find(mintREST).median, "cluster-rest-urls/s")
	b.ReportMetric(res.find(mintGRPC).median, "cluster-grpc-urls/s")
	b.ReportMetric(res.find(mintEtcd).median, "cluster-etcd-txn/s")
	return res
}

// startClusterStack runs consoleauth (through devstack, its etcd flag
// overridden) and the compute agent (started here: devstack's readiness
// check of the agent reads devstack's own etcd) on the etcd cluster behind
// cli, with instances added to the agent's inventory. The proxies are left
// out: the caller starts those it needs (GRPCFlags).
func startClusterStack(b *testing.B, cli *clientv3.Client, instances ...devstack.Instance) *devstack.World {
	b.Helper()
	endpoints := "--etcd_endpoints=" + strings.Join(cli.Endpoints(), ",")
	logs := logFile(b, "services.log", 60)
	w := devstacktest.Start(b, devstack.Options{
		Ports:     distinctPorts(b),
		Instances: instances,
		Logs:      logs,
		Skip:      map[string]bool{devstack.ComputeAgent: true, devstack.NoVNCProxy: true, devstack.XVPProxy: true},
		Args:      map[string][]string{devstack.ConsoleAuth: {endpoints}},
	})
	startService(b, devstack.ComputeAgent, logs, append([]string{
		"--grpc_listen=" + w.Addr(w.Ports.ComputeAgent),
		"--host=" + devstack.ComputeHost,
		endpoints,
		"--driver=static",
		"--inventory_file=" + filepath.Join(w.Dir, "inventory.json"),
		"--consoleauth_address=" + w.Addr(w.Ports.ConsoleAuthGRPC),
		"--registration_ttl=5",
		"--admin_listen=" + w.AdminAddr(w.Ports.ComputeAgentAdmin),
	}, w.GRPCFlags(devstack.ComputeAgent)...))
	// Ready once it registered and published the demo instance.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, key := range []string{registry.ComputeKey(devstack.ComputeHost), registry.ComputeInstanceKey(devstack.ComputeHost, devstack.DemoUUID)} {
		for {
			resp, err := cli.Get(ctx, key)
			if err == nil && len(resp.Kvs) > 0 {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("compute agent: %s not in the cluster after a minute; last lines of the services' log:\n%s", key, tail(logs.Name(), 30))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return w
}

// service is a service process the benchmark started itself, beside a
// devstack.
type service struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startService runs a service binary (devstacktest's build) with args, its
// output to logs, and ends it when the benchmark ends.
func startService(b *testing.B, name string, logs io.Writer, args []string) *service {
	b.Helper()
	s := &service{name: name, done: make(chan struct{})}
	s.cmd = exec.Command(filepath.Join(devstacktest.Binaries(b), name), args...)
	s.cmd.Stdout, s.cmd.Stderr = logs, logs
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	b.Cleanup(func() {
		if err := s.stop(10 * time.Second); err != nil {
			b.Error(err)
		}
	})
	return s
}

// stop sends SIGTERM and waits for the exit, killing the process after
// grace; it reports an unclean exit.
func (s *service) stop(grace time.Duration) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(grace):
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM", s.name, grace)
	}
	if s.err != nil {
		return fmt.Errorf("%s: %v", s.name, s.err)
	}
	return nil
}
