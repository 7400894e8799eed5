// Package certs makes throwaway certificate authorities for tests and for
// the dev stack (`make run`): an ECDSA P-256 CA that lives in memory and
// issues leaf certificates for the hosts it is given (IP addresses and DNS
// names), each usable both as a server and as an mTLS client certificate.
// Nothing here is fit for production: keys are never protected and the CA's
// key is never written out.
//
// Tests use the helpers that take a testing.TB (TestCA, TestFiles, TestCert): they make a
// fresh CA valid for an hour and fail the test on error. The dev stack uses
// NewCA and CA.WriteFiles; CA.WriteQEMUDir writes the directory QEMU's
// VeNCrypt (tls-creds-x509) reads.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// CA is a throwaway certificate authority.
type CA struct {
	// Cert is the CA's own (self-signed) certificate.
	Cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	validity time.Duration
}

// Files names the PEM files WriteFiles wrote: the leaf certificate, its key
// and the CA certificate that signed it. The fields match
// pkg/tlsconfig.Files.
type Files struct {
	Cert, Key, CA string
}

// NewCA makes a CA named name whose certificates (its own and those it
// issues) are valid from five minutes ago until validity from now.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key, validity: validity}, nil
}

// Pool returns a pool trusting the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue returns a new key and a certificate for hosts signed by the CA,
// usable for server and client authentication. Each host is an IP address
// or a DNS name; empty ones and duplicates are dropped.
func (ca *CA) Issue(hosts ...string) (tls.Certificate, error) {
	return ca.IssueIdentity(Identity{Name: "vncgate test service"}, hosts...)
}

// Identity is who a certificate speaks for, in the form vncgate reads
// (pkg/authn): Name is the subject's common name (a compute agent's host
// name, or the etcd user name under etcd's client-certificate auth), and
// Role, when set, is written both as the URI SAN urn:vncgate:role:ROLE and
// as the subject's organizational unit.
type Identity struct {
	Name string
	Role string
}

// RoleURIPrefix starts the URI SAN that names a certificate's role.
const RoleURIPrefix = "urn:vncgate:role:"

// IssueIdentity is Issue for a certificate that speaks for id.
func (ca *CA) IssueIdentity(id Identity, hosts ...string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.Name},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ca.validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if id.Role != "" {
		tmpl.Subject.OrganizationalUnit = []string{id.Role}
		u, err := url.Parse(RoleURIPrefix + id.Role)
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl.URIs = []*url.URL{u}
	}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("leaf certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// WriteFiles issues a certificate for hosts and writes it, its key and the
// CA certificate as PEM files cert.pem, key.pem and ca.pem into dir (made
// if missing, mode 0700; files 0600).
func (ca *CA) WriteFiles(dir string, hosts ...string) (Files, error) {
	return ca.WriteIdentityFiles(dir, Identity{Name: "vncgate test service"}, hosts...)
}

// WriteIdentityFiles is WriteFiles for a certificate that speaks for id.
func (ca *CA) WriteIdentityFiles(dir string, id Identity, hosts ...string) (Files, error) {
	leaf, err := ca.IssueIdentity(id, hosts...)
	if err != nil {
		return Files{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(leaf.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, err
	}
	f := Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), CA: filepath.Join(dir, "ca.pem")}
	for _, file := range []struct {
		path  string
		block *pem.Block
	}{
		{f.CA, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}},
		{f.Cert, &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}},
		{f.Key, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}},
	} {
		if err := os.WriteFile(file.path, pem.EncodeToMemory(file.block), 0o600); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// WriteQEMUDir issues a server certificate for hosts and writes what QEMU's
// `-object tls-creds-x509,dir=DIR,endpoint=server` reads, and nothing else
// (QEMU refuses a directory missing one): ca-cert.pem (the CA's
// certificate), server-cert.pem and server-key.pem (PKCS #8) into dir,
// made if missing. The CA's key is never written.
func (ca *CA) WriteQEMUDir(dir string, hosts ...string) error {
	leaf, err := ca.Issue(hosts...)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, file := range []struct {
		name  string
		block *pem.Block
	}{
		{"ca-cert.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}},
		{"server-cert.pem", &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}},
		{"server-key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}},
	} {
		if err := os.WriteFile(filepath.Join(dir, file.name), pem.EncodeToMemory(file.block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// TestCA makes a CA for one test, valid for an hour, for tests that need
// several certificates from one CA (a server's and a client's) or several
// CAs.
func TestCA(t testing.TB) *CA {
	t.Helper()
	return testCA(t)
}

// testCA makes a CA for one test, valid for an hour.
func testCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("vncgate test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestFiles writes a fresh CA and a certificate it signed for hosts into a
// directory removed when t ends, and returns the file names and a pool
// trusting the CA.
func TestFiles(t testing.TB, hosts ...string) (Files, *x509.CertPool) {
	t.Helper()
	ca := testCA(t)
	f, err := ca.WriteFiles(t.TempDir(), hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return f, ca.Pool()
}

// TestCert returns a certificate for hosts, signed by a fresh CA, and a pool
// trusting that CA.
func TestCert(t testing.TB, hosts ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := testCA(t)
	c, err := ca.Issue(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, ca.Pool()
}

// serial is a random 128-bit certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err) // unreachable: crypto/rand.Reader never fails (Go 1.24+)
	}
	return n
}

// TestCombined writes a certificate for hosts and its key into one PEM file
// (Nova's cert option without key) and returns its path and a pool
// trusting its CA.
func TestCombined(t testing.TB, hosts ...string) (string, *x509.CertPool) {
	t.Helper()
	f, pool := TestFiles(t, hosts...)
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	combined := filepath.Join(t.TempDir(), "self.pem")
	if err := os.WriteFile(combined, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	return combined, pool
}
