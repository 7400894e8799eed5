package tlsconfig

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// checkInterval is how often, at most, the files of a group are read
// again, so that a busy server does not read them on every handshake.
const checkInterval = time.Second

// material is what one reading of a group's files gave.
type material struct {
	pair *tls.Certificate // nil without Cert
	pool *x509.CertPool   // nil without CA
}

// source serves the current material of a group of files, parsing them
// again when their content changes. Content, not modification time: two
// writes within one clock tick of the file system look alike. It is safe
// for concurrent use.
type source struct {
	files Files
	log   *slog.Logger

	mu   sync.Mutex
	next time.Time // no reading before this
	// seen is the SHA-256 of the files last read (good or broken).
	seen [sha256.Size]byte
	cur  *material
}

// newSource reads the files once; a group that cannot be read now is an
// error, as at start-up.
func newSource(f Files) (*source, error) {
	log := f.Log
	if log == nil {
		log = slog.Default()
	}
	s := &source{files: f, log: log}
	m, sum, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur, s.seen, s.next = m, sum, time.Now().Add(checkInterval)
	return s, nil
}

// load reads and parses the files, and returns their content's hash.
func (s *source) load() (*material, [sha256.Size]byte, error) {
	h := sha256.New()
	read := func(path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", path, len(b))
		h.Write(b)
		return b, nil
	}
	var sum [sha256.Size]byte
	m := &material{}
	if s.files.Cert != "" {
		certPEM, err := read(s.files.Cert)
		if err != nil {
			return nil, sum, err
		}
		keyPEM := certPEM
		if s.files.Key != "" {
			if keyPEM, err = read(s.files.Key); err != nil {
				return nil, sum, err
			}
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			if s.files.Key == "" {
				err = fmt.Errorf("tls: %s (with no key file given, it must hold the private key too): %w", s.files.Cert, err)
			} else {
				err = fmt.Errorf("tls: %s, %s: %w", s.files.Cert, s.files.Key, err)
			}
			return nil, sum, err
		}
		m.pair = &pair
	}
	if s.files.CA != "" {
		caPEM, err := read(s.files.CA)
		if err != nil {
			return nil, sum, err
		}
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(caPEM) {
			return nil, sum, fmt.Errorf("tls: no certificate in %s", s.files.CA)
		}
	}
	copy(sum[:], h.Sum(nil))
	return m, sum, nil
}

// current returns the files' material, parsed again if their content
// changed since the last reading (at most one a second). A group that
// changed but cannot be used is logged once per change and the last good
// material is kept.
func (s *source) current() *material {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Before(s.next) {
		return s.cur
	}
	s.next = now.Add(checkInterval)
	m, sum, err := s.load()
	if err != nil {
		// A broken group is logged once, not at every reading.
		broken := sha256.Sum256([]byte(err.Error()))
		if broken != s.seen {
			s.seen = broken
			s.log.Error("TLS files changed but cannot be used; keeping the certificate read before",
				"cert", s.files.Cert, "key", s.files.Key, "ca", s.files.CA, "error", err)
		}
		return s.cur
	}
	if sum == s.seen {
		return s.cur
	}
	s.seen, s.cur = sum, m
	s.log.Info("TLS files reloaded", "cert", s.files.Cert, "key", s.files.Key, "ca", s.files.CA)
	return m
}

// client is a client configuration with the current CA as RootCAs that
// presents the current certificate at every handshake.
func (s *source) client() *tls.Config {
	m := s.current()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: m.pool}
	if m.pair != nil {
		cfg.Certificates = []tls.Certificate{*m.pair}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.current().pair, nil
		}
	}
	return cfg
}

// reloadingCreds are gRPC client credentials that build the TLS
// configuration afresh for each connection, so that new connections trust
// a replaced CA file too (a *tls.Config's RootCAs is fixed).
type reloadingCreds struct {
	src        *source
	info       credentials.ProtocolInfo
	serverName string
}

func (c *reloadingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg := c.src.client()
	cfg.ServerName = c.serverName
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, conn)
}

func (c *reloadingCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsconfig: client credentials used by a server")
}

func (c *reloadingCreds) Info() credentials.ProtocolInfo { return c.info }

func (c *reloadingCreds) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

// OverrideServerName implements a deprecated method of the interface:
// the name every certificate is then checked against.
func (c *reloadingCreds) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}
