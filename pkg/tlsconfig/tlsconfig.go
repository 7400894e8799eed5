// Package tlsconfig builds the TLS configurations vncgate's services share:
// mutual TLS between services (and to etcd) when certificates are given,
// plaintext on loopback when they are not.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Files names PEM files. An empty Cert means no TLS.
type Files struct {
	Cert, Key string
	// CA verifies the peer. For a server it turns on client-certificate
	// checks (mTLS); for a client it replaces the system roots.
	CA string
}

// Enabled reports whether TLS was configured.
func (f Files) Enabled() bool { return f.Cert != "" || f.CA != "" }

// Server returns the server side configuration, or nil without TLS.
func (f Files) Server() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if err := f.loadPair(cfg); err != nil {
		return nil, err
	}
	if f.CA != "" {
		pool, err := loadPool(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Client returns the client side configuration, or nil without TLS.
func (f Files) Client() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		if err := f.loadPair(cfg); err != nil {
			return nil, err
		}
	}
	if f.CA != "" {
		pool, err := loadPool(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

func (f Files) loadPair(cfg *tls.Config) error {
	if f.Cert == "" || f.Key == "" {
		return fmt.Errorf("tls: need both a certificate and a key")
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: no certificate in %s", path)
	}
	return pool, nil
}
