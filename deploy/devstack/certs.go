package devstack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// certValidity is how long the throwaway certificates live: long enough for
// a `make run` session, short enough that a leaked one soon stops working.
const certValidity = 24 * time.Hour

// writeCerts writes into dir a throwaway CA (ECDSA P-256) and one
// certificate signed by it for localhost, 127.0.0.1, ::1 and host, usable
// both as server and as client certificate (every service presents the same
// one, as server and as mTLS client). The CA's key is not kept.
func writeCerts(dir, host string) (tlsconfig.Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tlsconfig.Files{}, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "vncgate devstack CA"},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(certValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tlsconfig.Files{}, fmt.Errorf("ca certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "vncgate devstack service"},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(certValidity),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			leafTmpl.IPAddresses = append(leafTmpl.IPAddresses, ip)
		}
	} else if host != "localhost" {
		leafTmpl.DNSNames = append(leafTmpl.DNSNames, host)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		return tlsconfig.Files{}, fmt.Errorf("service certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	f := tlsconfig.Files{
		Cert: filepath.Join(dir, "cert.pem"),
		Key:  filepath.Join(dir, "key.pem"),
		CA:   filepath.Join(dir, "ca.pem"),
	}
	for _, file := range []struct {
		path  string
		block *pem.Block
	}{
		{f.CA, &pem.Block{Type: "CERTIFICATE", Bytes: caDER}},
		{f.Cert, &pem.Block{Type: "CERTIFICATE", Bytes: leafDER}},
		{f.Key, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}},
	} {
		if err := os.WriteFile(file.path, pem.EncodeToMemory(file.block), 0o600); err != nil {
			return tlsconfig.Files{}, err
		}
	}
	return f, nil
}

// serial is a random 128-bit certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err) // unreachable: crypto/rand.Reader never fails (Go 1.24+)
	}
	return n
}
