// Package etcdserver runs a single-member etcd server inside this process,
// for `make run` (deploy/devstack) and for the child process behind package
// testkit/etcd, which is what tests use. Production runs a real etcd cluster
// instead.
//
// The server listens on plain HTTP on the address it is given, keeps its
// data in the directory it is given, logs only fatal errors, and uses short
// raft ticks so it starts and stops quickly and grants leases as short as
// one second.
package etcdserver

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/vncgate/vncgate/testkit/internal/freeport"
)

// Server is a running embedded etcd.
type Server struct {
	// Endpoint is the client address, host:port.
	Endpoint string
	etcd     *embed.Etcd
}

// Start runs etcd with its data in dir (made if missing; data already there
// is kept), serving clients on clientAddr and its raft peer port on peerAddr
// (host:port each; with port 0 a free port is chosen). It returns once etcd
// serves clients.
func Start(dir, clientAddr, peerAddr string) (*Server, error) {
	clientAddr, err := freeport.Resolve(clientAddr)
	if err != nil {
		return nil, err
	}
	if peerAddr, err = freeport.Resolve(peerAddr); err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "vncgate"
	cfg.Dir = dir
	// etcd logs expected noise at error level on every start and stop
	// ("failed to update storage version", "use of closed network
	// connection"); a dev and test server keeps quiet unless it dies.
	cfg.LogLevel = "fatal"
	// One member never loses an election: short ticks make start and stop
	// faster and allow 1 s leases (etcd's minimum TTL follows the election
	// timeout).
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	clientURL := url.URL{Scheme: "http", Host: clientAddr}
	peerURL := url.URL{Scheme: "http", Host: peerAddr}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s not ready after 30s", clientAddr)
	}
	return &Server{Endpoint: clientAddr, etcd: e}, nil
}

// Stop shuts etcd down and returns when it no longer listens. Its data stays
// in its directory, so a new Start there finds it again.
func (s *Server) Stop() {
	s.etcd.Close()
}
