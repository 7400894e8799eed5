// Package tlsconfig builds every TLS configuration vncgate's services use,
// from PEM file names, so that each link is configured one way:
//
//   - [Files] is one group of files (cert, key, CA): mutual TLS between
//     services and to etcd when given, plaintext (for loopback) when not.
//     Its methods also give the gRPC server and client credentials of every
//     service ([Files.ServerOption], [Files.DialOption]).
//   - [Public] is the TLS of a proxy's public port, configured as Nova
//     configures its console proxies: [DEFAULT] cert and key, [console]
//     ssl_minimum_version and ssl_ciphers.
//
// As in Nova, a certificate file may hold the private key too: when Key is
// empty the key is read from the Cert file.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Files names PEM files. Neither Cert nor CA means no TLS.
type Files struct {
	// Cert is this side's certificate chain; with Key empty it must hold
	// the private key too (one PEM with both, as Nova's cert option).
	Cert string
	// Key is Cert's private key, when kept in a file of its own.
	Key string
	// CA verifies the peer. For a server it turns on client-certificate
	// checks (mTLS); for a client it replaces the system roots.
	CA string
}

// Enabled reports whether TLS was configured.
func (f Files) Enabled() bool { return f.Cert != "" || f.CA != "" }

// Check reports a group that cannot work: a key without a certificate.
// It reads no file.
func (f Files) Check() error {
	if f.Key != "" && f.Cert == "" {
		return errors.New("a key without a certificate")
	}
	return nil
}

// Server returns the server side configuration, or nil without TLS.
func (f Files) Server() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.Cert == "" {
		return nil, errors.New("tls: a server needs a certificate")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	pair, err := LoadPair(f.Cert, f.Key)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = []tls.Certificate{pair}
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
	if err := f.Check(); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		pair, err := LoadPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
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

// ServerCredentials are the gRPC transport credentials of a server: TLS
// (mutual with a CA) when configured, plaintext otherwise.
func (f Files) ServerCredentials() (credentials.TransportCredentials, error) {
	cfg, err := f.Server()
	if err != nil {
		return nil, err
	}
	return TransportCredentials(cfg), nil
}

// ClientCredentials are the gRPC transport credentials of a client: TLS
// (presenting Cert when given) when configured, plaintext otherwise.
func (f Files) ClientCredentials() (credentials.TransportCredentials, error) {
	cfg, err := f.Client()
	if err != nil {
		return nil, err
	}
	return TransportCredentials(cfg), nil
}

// ServerOption is [Files.ServerCredentials] as a grpc.NewServer option.
func (f Files) ServerOption() (grpc.ServerOption, error) {
	creds, err := f.ServerCredentials()
	if err != nil {
		return nil, err
	}
	return grpc.Creds(creds), nil
}

// DialOption is [Files.ClientCredentials] as a grpc.NewClient option.
func (f Files) DialOption() (grpc.DialOption, error) {
	creds, err := f.ClientCredentials()
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(creds), nil
}

// TransportCredentials wraps cfg for gRPC; nil means plaintext.
func TransportCredentials(cfg *tls.Config) credentials.TransportCredentials {
	if cfg == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(cfg)
}

// LoadPair reads a certificate and its key. With key empty, the key is read
// from the certificate's file (Nova's cert option holding both).
func LoadPair(cert, key string) (tls.Certificate, error) {
	if key == "" {
		key = cert
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		if key == cert {
			return tls.Certificate{}, fmt.Errorf("tls: %s (with no key file given, it must hold the private key too): %w", cert, err)
		}
		return tls.Certificate{}, fmt.Errorf("tls: %w", err)
	}
	return pair, nil
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
