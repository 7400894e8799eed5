package etcd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/internal/freeport"
)

// ClusterElectionMs is a cluster's election timeout: five times a single
// member's, so that three processes on a busy test machine (the race
// detector, parallel tests) do not hold elections between themselves, and
// still short enough that a cluster whose members come back elects a leader
// well within a second.
const ClusterElectionMs = 500

// Cluster is an etcd cluster on loopback, each member a Server in a child
// process of its own, as production runs etcd: a test can stop or kill
// members to take a leader or the quorum away, and start them again on the
// same addresses and data.
type Cluster struct {
	// Members are the cluster's members; Members[i].Endpoint is member i's
	// client address.
	Members []*Server
}

// StartCluster runs an n-member cluster for t and returns it with a client
// of every member's endpoint; the client is closed and the members killed in
// t.Cleanup.
func StartCluster(t testing.TB, n int) (*Cluster, *clientv3.Client) {
	t.Helper()
	c := NewCluster(t, n)
	cli, err := etcdclient.New(c.Endpoints(), tlsconfig.Files{})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return c, cli
}

// NewCluster runs an n-member cluster for t (n ≥ 1), with every member's data
// in a directory of t's, and returns once every member serves clients. The
// members are killed in t.Cleanup.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := startCluster(n, func() (string, error) { return t.TempDir(), nil }, t.Logf)
	if c != nil {
		t.Cleanup(c.Close)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartClusterIn runs an n-member cluster (n ≥ 1) outside a test, as
// deploy/devstack does, with each member's data in a new folder in dir,
// and returns once every member serves clients. The caller ends it with
// Close; the members also end when this process does.
func StartClusterIn(dir string, n int) (*Cluster, error) {
	mkdir := func() (string, error) { return os.MkdirTemp(dir, "member-") }
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c, err := startCluster(n, mkdir, func(string, ...any) {})
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	return c, nil
}

// startCluster picks addresses, starts every member and retries on other
// ports (with fresh directories from mkdir) when one was taken meanwhile.
// The returned cluster, even with an error, is for the caller to Close.
func startCluster(n int, mkdir func() (string, error), logf func(string, ...any)) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("etcd cluster of %d members: want at least one", n)
	}
	c := &Cluster{}
	// Ports picked free may be taken by another process before etcd binds
	// them (tests run in parallel): then pick again, with fresh directories.
	for attempt := 1; ; attempt++ {
		c.Members = nil
		var peers []string
		for i := range n {
			s := &Server{name: fmt.Sprintf("m%d", i), electionMs: ClusterElectionMs}
			var err error
			if s.dir, err = mkdir(); err != nil {
				return c, err
			}
			if s.Endpoint, err = freeport.Resolve("127.0.0.1:0"); err != nil {
				return c, err
			}
			if s.peer, err = freeport.Resolve("127.0.0.1:0"); err != nil {
				return c, err
			}
			peers = append(peers, s.name+"=http://"+s.peer)
			c.Members = append(c.Members, s)
		}
		for _, s := range c.Members {
			s.cluster = strings.Join(peers, ",")
		}
		// Each member is ready only once a quorum elected a leader: they
		// start together.
		err := c.Start(c.all()...)
		if err == nil {
			return c, nil
		}
		c.Close()
		if attempt == startAttempts {
			return c, err
		}
		logf("etcd cluster: %v; trying other ports", err)
	}
}

// all is every member's index.
func (c *Cluster) all() []int {
	all := make([]int, len(c.Members))
	for i := range all {
		all[i] = i
	}
	return all
}

// Close kills every member, together: stopped one by one, each would first
// hand its leadership over or wait for a quorum that is going.
func (c *Cluster) Close() { c.Kill(c.all()...) }

// Leader returns the index of the member that a quorum elected leader,
// asking the members that run, each within ctx: an error when none
// answers or none knows a leader (no quorum, or an election under way).
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	var errs []error
	for i, s := range c.Members {
		if !s.running() {
			continue
		}
		id, leader, err := s.status(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("member %d: %w", i, err))
			continue
		}
		if leader == 0 {
			errs = append(errs, fmt.Errorf("member %d knows no leader", i))
			continue
		}
		if id == leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no etcd leader: %w", errors.Join(errs...))
}

// status is the member's own ID and its leader's (0: none), from the
// Maintenance Status call of a client of this member alone.
func (s *Server) status(ctx context.Context) (id, leader uint64, err error) {
	cli, err := etcdclient.New([]string{s.Endpoint}, tlsconfig.Files{})
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	resp, err := cli.Status(ctx, s.Endpoint)
	if err != nil {
		return 0, 0, err
	}
	return resp.Header.MemberId, resp.Leader, nil
}

// Running reports whether member i's process runs (it is not stopped or
// killed).
func (c *Cluster) Running(i int) bool { return c.Members[i].running() }

// Endpoints are the client addresses of every member.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, s := range c.Members {
		eps = append(eps, s.Endpoint)
	}
	return eps
}

// Stop stops the members given by index, together, and returns once their
// processes have exited. A leader among them first hands its leadership
// over, which takes etcd's request timeout (over 5 s) when the member it
// hands it to is stopping too: Kill takes the quorum away at once.
func (c *Cluster) Stop(members ...int) {
	var wg sync.WaitGroup
	for _, i := range members {
		wg.Go(c.Members[i].Stop)
	}
	wg.Wait()
}

// Kill kills the members given by index, together, as a crash would (see
// Server.Kill), and returns once their processes have exited. Unlike Stop,
// a leader among them hands nothing over: the others find it gone after
// an election timeout.
func (c *Cluster) Kill(members ...int) {
	var wg sync.WaitGroup
	for _, i := range members {
		wg.Go(c.Members[i].Kill)
	}
	wg.Wait()
}

// Start starts the stopped members given by index, together, on their
// addresses and data, and returns once each serves clients, which needs a
// quorum of the cluster to be up with them.
func (c *Cluster) Start(members ...int) error {
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for k, i := range members {
		wg.Go(func() {
			if c.Members[i].running() {
				errs[k] = fmt.Errorf("member %d runs already", i)
				return
			}
			if err := c.Members[i].start(); err != nil {
				errs[k] = fmt.Errorf("member %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stdin != nil
}
