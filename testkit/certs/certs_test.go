package certs

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// handshake runs a TLS handshake over a loopback connection between server
// and client and returns the certificates the server got from the client,
// and the client's error.
func handshake(t *testing.T, server, client *tls.Config) ([]*x509.Certificate, error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan []*x509.Certificate, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			peers <- nil
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() != nil {
			peers <- nil
			return
		}
		peers <- tc.ConnectionState().PeerCertificates
		io.WriteString(c, "x")
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), client)
	if err != nil {
		<-peers
		return nil, err
	}
	defer c.Close()
	_, err = c.Read(make([]byte, 1))
	return <-peers, err
}

func TestCertServesAndAuthenticatesClients(t *testing.T) {
	cert, pool := TestCert(t, "127.0.0.1", "localhost", "127.0.0.1", "")
	if got := len(cert.Leaf.IPAddresses); got != 1 {
		t.Errorf("got %d IP addresses, want 1 (duplicates dropped)", got)
	}
	if got := cert.Leaf.DNSNames; len(got) != 1 || got[0] != "localhost" {
		t.Errorf("got DNS names %q, want [localhost] (empty host dropped)", got)
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	client := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
	peers, err := handshake(t, server, client)
	if err != nil {
		t.Fatalf("mTLS handshake: %v", err)
	}
	if len(peers) == 0 {
		t.Fatal("server got no client certificate")
	}

	_, otherPool := TestCert(t, "127.0.0.1")
	if _, err := handshake(t, server, &tls.Config{RootCAs: otherPool}); err == nil {
		t.Fatal("client trusting another CA: got nil error, want a verification failure")
	}
}

func TestFilesLoad(t *testing.T) {
	f, pool := TestFiles(t, "127.0.0.1")
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	fromFile := x509.NewCertPool()
	if !fromFile.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	if !fromFile.Equal(pool) {
		t.Error("ca.pem and the returned pool differ")
	}
	for _, name := range []string{f.Cert, f.Key, f.CA} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: got mode %v, want 0600", name, got)
		}
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}}
	if _, err := handshake(t, server, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}); err != nil {
		t.Fatalf("handshake with the written files: %v", err)
	}
}

func TestWriteQEMUDir(t *testing.T) {
	ca := TestCA(t)
	dir := filepath.Join(t.TempDir(), "pki")
	if err := ca.WriteQEMUDir(dir, "127.0.0.1", "localhost"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"}; !slices.Equal(names, want) {
		t.Fatalf("got files %v, want exactly %v", names, want)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) || !pool.Equal(ca.Pool()) {
		t.Fatal("ca-cert.pem is not the CA's certificate")
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if _, err := handshake(t, server, &tls.Config{RootCAs: pool, ServerName: host}); err != nil {
			t.Errorf("handshake checking %s: %v", host, err)
		}
	}
}
