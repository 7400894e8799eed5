// Package etcdserver runs a single-member etcd server inside this process,
// for `make run` (deploy/devstack) and for the child process behind package
// testkit/etcd, which is what tests use. Production runs a real etcd cluster
// instead.
//
// The server listens on plain HTTP on the address it is given (or on TLS,
// optionally requiring client certificates, as production etcd runs for
// vncgate's least-privilege roles), keeps its data in the directory it is
// given, logs only fatal errors, and uses short raft ticks so it starts and
// stops quickly and grants leases as short as one second.
package etcdserver

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
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
	return StartConfig(Config{Dir: dir, ClientAddr: clientAddr, PeerAddr: peerAddr})
}

// Config is how StartConfig runs etcd.
type Config struct {
	// Dir, ClientAddr and PeerAddr are Start's arguments.
	Dir, ClientAddr, PeerAddr string
	// CertFile and KeyFile, when set, make clients connect over TLS only
	// (the certificate must name ClientAddr's host, and serves as etcd's
	// own client certificate towards itself too).
	CertFile, KeyFile string
	// ClientCAFile, when set with CertFile, requires every client to show
	// a certificate it signed (etcd --client-cert-auth): once
	// authentication is enabled, the certificate's common name is the
	// client's etcd user.
	ClientCAFile string
	// BcryptCost is etcd --bcrypt-cost for user passwords; 0 keeps etcd's
	// default (10). Tests that add users set 4, the lowest.
	BcryptCost uint
	// Name and InitialCluster (etcd --name, --initial-cluster:
	// "name=http://peer,...") make this a member of a cluster; empty: a
	// single member. ElectionMs (0: 100) is the election timeout, with a
	// tick of a tenth of it: a cluster on a busy test machine wants more
	// than one member's 100 ms.
	Name, InitialCluster string
	ElectionMs           uint
}

// StartConfig is Start with the options of cfg.
func StartConfig(c Config) (*Server, error) {
	clientAddr, err := freeport.Resolve(c.ClientAddr)
	if err != nil {
		return nil, err
	}
	peerAddr, err := freeport.Resolve(c.PeerAddr)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "vncgate"
	cfg.Dir = c.Dir
	if c.BcryptCost > 0 {
		cfg.BcryptCost = c.BcryptCost
	}
	// etcd logs expected noise at error level on every start and stop
	// ("failed to update storage version", "use of closed network
	// connection"); a dev and test server keeps quiet unless it dies.
	cfg.LogLevel = "fatal"
	// One member never loses an election: short ticks make start and stop
	// faster and allow 1 s leases (etcd's minimum TTL follows the election
	// timeout).
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	if c.ElectionMs > 0 {
		cfg.TickMs, cfg.ElectionMs = c.ElectionMs/10, c.ElectionMs
	}
	clientURL := url.URL{Scheme: "http", Host: clientAddr}
	if c.CertFile != "" {
		clientURL.Scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       c.CertFile,
			KeyFile:        c.KeyFile,
			TrustedCAFile:  c.ClientCAFile,
			ClientCertAuth: c.ClientCAFile != "",
		}
	}
	peerURL := url.URL{Scheme: "http", Host: peerAddr}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	if c.Name != "" {
		cfg.Name, cfg.InitialCluster = c.Name, c.InitialCluster
	}
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
