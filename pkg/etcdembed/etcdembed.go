// Package etcdembed runs a single-member etcd server inside the process, for
// tests and `make run`. Production runs a real etcd cluster instead.
package etcdembed

import (
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Server is an embedded etcd that can be stopped and started again on the
// same address and data, to test how services live through an etcd outage.
type Server struct {
	// Endpoint is the client address, host:port.
	Endpoint string
	cfg      *embed.Config
	etcd     *embed.Etcd
}

// Start runs etcd with its data in dir. clientAddr is host:port; with port 0
// a free port is chosen.
func Start(dir, clientAddr string) (*Server, error) {
	clientAddr, err := resolvePort(clientAddr)
	if err != nil {
		return nil, err
	}
	peerAddr, err := resolvePort("127.0.0.1:0")
	if err != nil {
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
	s := &Server{Endpoint: clientAddr, cfg: cfg}
	return s, s.start()
}

func (s *Server) start() error {
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("embedded etcd on %s not ready after 30s", s.Endpoint)
	}
	s.etcd = e
	return nil
}

// Stop shuts etcd down; Restart brings it back with the same data.
func (s *Server) Stop() {
	if s.etcd != nil {
		s.etcd.Close()
		s.etcd = nil
	}
}

// Restart starts a stopped server again on the same address and data.
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

// resolvePort replaces port 0 by a free one: etcd needs to know its
// advertised URL before it listens.
func resolvePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("etcd address %q: %w", addr, err)
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
