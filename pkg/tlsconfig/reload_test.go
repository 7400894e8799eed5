package tlsconfig

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// issue writes a certificate of ca for name (and 127.0.0.1) into a fresh
// directory.
func issue(t *testing.T, ca *certs.CA, name string) Files {
	t.Helper()
	f, err := ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: name}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// replace renames the files of from over those of to, key first, as an
// operator rotating certificates would.
func replace(t *testing.T, to, from Files) {
	t.Helper()
	for _, p := range [][2]string{{from.Key, to.Key}, {from.Cert, to.Cert}, {from.CA, to.CA}} {
		if err := os.Rename(p[0], p[1]); err != nil {
			t.Fatal(err)
		}
	}
}

// serveTLS accepts TLS connections with cfg, completes each handshake and
// sends the client certificate's common name back on got.
func serveTLS(t *testing.T, cfg *tls.Config) (addr string, got <-chan string) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	names := make(chan string, 100)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
					names <- pc[0].Subject.CommonName
				}
				_, _ = tc.Write([]byte{1}) // the client waits for it: TLS 1.3 reports a refused certificate late
			}
			c.Close()
		}
	}()
	return l.Addr().String(), names
}

// dial completes a handshake and a one-byte read, and returns the server
// certificate's common name.
func dial(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

// eventually retries check until it succeeds: the files are looked at
// again at most once a second. The deadline only bounds a hang.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServerReload: the server's certificate and CA files are replaced by
// a new CA's; the next handshakes use them, a client of the new CA is
// accepted and one of the old CA is refused, without a restart.
func TestServerReload(t *testing.T) {
	oldCA, newCA := certs.TestCA(t), certs.TestCA(t)
	server := issue(t, oldCA, "server-old")
	cfg, err := server.Server()
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, cfg)
	oldClient, err := issue(t, oldCA, "client-old").Client()
	if err != nil {
		t.Fatal(err)
	}
	newClient, err := issue(t, newCA, "client-new").Client()
	if err != nil {
		t.Fatal(err)
	}
	if name, err := dial(addr, oldClient); err != nil || name != "server-old" {
		t.Fatalf("before the rotation: got %q, %v; want server-old", name, err)
	}

	replace(t, server, issue(t, newCA, "server-new"))
	eventually(t, "a client of the new CA after the rotation", func() error {
		name, err := dial(addr, newClient)
		if err == nil && name != "server-new" {
			err = errors.New("server presented " + name)
		}
		return err
	})
	if _, err := dial(addr, oldClient); err == nil {
		t.Error("a client of the old CA after the rotation: got a connection, want a refusal")
	}
}

// TestClientReload: a client's certificate files are replaced; the next
// handshake presents the new certificate, through a *tls.Config and
// through gRPC credentials, which trust a replaced CA file too.
func TestClientReload(t *testing.T) {
	ca := certs.TestCA(t)
	client := issue(t, ca, "client-1")
	server, err := issue(t, ca, "server").Server()
	if err != nil {
		t.Fatal(err)
	}
	addr, names := serveTLS(t, server)
	cfg, err := client.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(addr, cfg); err != nil {
		t.Fatal(err)
	}
	if got := <-names; got != "client-1" {
		t.Fatalf("before the rotation: server saw %q, want client-1", got)
	}
	replace(t, client, issue(t, ca, "client-2"))
	eventually(t, "the new client certificate", func() error {
		if _, err := dial(addr, cfg); err != nil {
			return err
		}
		if got := <-names; got != "client-2" {
			return errors.New("server saw " + got)
		}
		return nil
	})
}

// TestGRPCClientReload: gRPC client credentials follow a CA rotation: once
// the client's files hold the new CA's certificate and CA, new connections
// reach a server of the new CA, presenting the new certificate.
func TestGRPCClientReload(t *testing.T) {
	oldCA, newCA := certs.TestCA(t), certs.TestCA(t)
	client := issue(t, oldCA, "client-old")
	creds, err := client.ClientCredentials()
	if err != nil {
		t.Fatal(err)
	}
	so, err := issue(t, newCA, "server-new").ServerOption()
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 100)
	srv := grpc.NewServer(so, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				seen <- ti.State.PeerCertificates[0].Subject.CommonName
			}
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	check := func() error {
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(); err == nil {
		t.Fatal("client of the old CA: got a connection to a server of the new CA")
	}
	replace(t, client, issue(t, newCA, "client-new"))
	eventually(t, "gRPC call after the client's rotation", check)
	if got := <-seen; got != "client-new" {
		t.Errorf("server saw %q, want client-new", got)
	}
}

// TestBrokenReloadKeepsLastGood: a certificate file replaced by garbage is
// logged and the certificate read before stays in use.
func TestBrokenReloadKeepsLastGood(t *testing.T) {
	ca := certs.TestCA(t)
	var logs testlog.Buffer
	server := issue(t, ca, "server-good")
	server.Log = slog.New(slog.NewJSONHandler(&logs, nil))
	cfg, err := server.Server()
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, cfg)
	client, err := issue(t, ca, "client").Client()
	if err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(t.TempDir(), "broken.pem")
	if err := os.WriteFile(broken, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(broken, server.Cert); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reload failure logged", func() error {
		if name, err := dial(addr, client); err != nil || name != "server-good" {
			t.Fatalf("with a broken certificate file: got %q, %v; want server-good still", name, err)
		}
		if !strings.Contains(logs.String(), "TLS files changed but cannot be used") {
			return errors.New("not logged yet")
		}
		return nil
	})
	if n := strings.Count(logs.String(), "cannot be used"); n != 1 {
		t.Errorf("broken file logged %d times, want once per change", n)
	}
}

// TestServerCertOptional: a REST listener verifies a certificate when one
// is presented and lets a caller without one through to prove itself
// otherwise; a certificate of another CA is refused.
func TestServerCertOptional(t *testing.T) {
	ca := certs.TestCA(t)
	cfg, err := issue(t, ca, "server").ServerCertOptional()
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, cfg)
	with, err := issue(t, ca, "client").Client()
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := issue(t, certs.TestCA(t), "stranger").Client()
	if err != nil {
		t.Fatal(err)
	}
	foreign.RootCAs = with.RootCAs
	without := &tls.Config{RootCAs: with.RootCAs}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{{"certificate of the CA", with, true}, {"no certificate", without, true}, {"certificate of another CA", foreign, false}} {
		if _, err := dial(addr, tc.cfg); (err == nil) != tc.ok {
			t.Errorf("%s: got %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
