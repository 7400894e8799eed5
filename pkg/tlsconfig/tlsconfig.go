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
//
// Certificates rotate without a restart: configurations built from [Files]
// look at the files' size and modification time at most once a second and
// read them again when they changed; a file that cannot be read then is
// logged and the last good certificate and CA stay in use. Replace files
// by renaming a complete new file over the old one, key first.
package tlsconfig

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"

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
	// Log receives the reloads of these files and the failures to read
	// them (the last good certificate stays in use); slog.Default() when
	// nil.
	Log *slog.Logger
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

// Server returns the server side configuration, or nil without TLS. With
// a CA, clients must present a certificate it signed (mTLS). The
// certificate and the CA are read again when their files change (see
// [Files.Log]): every handshake uses the files on disk, checked at most
// once a second.
func (f Files) Server() (*tls.Config, error) {
	return f.server(tls.RequireAndVerifyClientCert)
}

// ServerCertOptional is [Files.Server] for a listener whose callers may
// prove who they are otherwise (a bearer key over TLS): a client
// certificate is verified when presented, not required.
func (f Files) ServerCertOptional() (*tls.Config, error) {
	return f.server(tls.VerifyClientCertIfGiven)
}

func (f Files) server(clientAuth tls.ClientAuthType) (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.Cert == "" {
		return nil, errors.New("tls: a server needs a certificate")
	}
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	m := src.current()
	base := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.pair}}
	if f.CA != "" {
		base.ClientCAs = m.pool
		base.ClientAuth = clientAuth
	}
	// A fresh configuration per handshake, so that a replaced certificate or
	// CA is used without a restart. base stays as it was loaded, for callers
	// that look at it.
	template := base.Clone()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := src.current()
		c := template.Clone()
		c.Certificates = []tls.Certificate{*m.pair}
		if f.CA != "" {
			c.ClientCAs = m.pool
		}
		return c, nil
	}
	return base, nil
}

// Client returns the client side configuration, or nil without TLS. The
// certificate presented is read again when its files change; the CA
// (RootCAs) is the one read now: gRPC links built with
// [Files.ClientCredentials] read it again too.
func (f Files) Client() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if err := f.Check(); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	return src.client(), nil
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
// (presenting Cert when given) when configured, plaintext otherwise. Every
// handshake uses the certificate and CA files on disk (checked at most
// once a second), so a link survives a certificate rotation.
func (f Files) ClientCredentials() (credentials.TransportCredentials, error) {
	if !f.Enabled() {
		return insecure.NewCredentials(), nil
	}
	if err := f.Check(); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	src, err := newSource(f)
	if err != nil {
		return nil, err
	}
	return &reloadingCreds{src: src, info: credentials.NewTLS(src.client()).Info()}, nil
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
