package rfbproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// refusal runs Handshake between a scripted RFB 3.8 client and the VNC
// server at addr, which must fail; it returns the error and what the client
// was told.
func refusal(t *testing.T, addr, host string, cfg *Config) (clientSaw, error) {
	t.Helper()
	server, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	clientEnd, proxyClient := loopback.Pair(t)
	var saw clientSaw
	done := script(clientEnd, rfbClient(version38, typeNone, &saw))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vnc, _, err := Handshake(ctx, proxyClient, server, host, cfg)
	if err == nil {
		vnc.Close()
		t.Fatalf("Handshake with %s succeeded, want a refusal", addr)
	}
	proxyClient.Close()
	wait(t, "client", done)
	return saw, err
}

// TestQEMU runs Handshake against real QEMU VNC servers: VeNCrypt x509
// with verify-peer=yes (libvirt's vnc_tls=1, vnc_tls_x509_verify=1), VNC
// password authentication only, and no authentication.
func TestQEMU(t *testing.T) {
	qemu.Require(t)
	ca := certs.TestCA(t)
	dir := filepath.Join(t.TempDir(), "pki")
	if err := ca.WriteQEMUDir(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	clientCert, err := ca.Issue("vncgate proxy")
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, foreignPool := certs.TestCert(t, "vncgate proxy")
	addrOf := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	tlsAddr := addrOf(qemu.StartVeNCrypt(t, dir, true))
	vencrypt := func(tc *tls.Config, verifyHostname bool) *Config {
		return &Config{AuthSchemes: []string{"vencrypt"}, TLS: tc, VerifyHostname: verifyHostname}
	}
	good := vencrypt(&tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: ca.Pool()}, true)
	isQEMU := func(t *testing.T, _ net.Conn, si rfb.ServerInit) {
		if !strings.Contains(si.Name, "QEMU") {
			t.Errorf("desktop name %q, want QEMU's", si.Name)
		}
	}

	// QEMU's VNC listen backlog is 1: the sessions run one after another.
	for _, version := range []string{"3.8", "3.7", "3.3"} {
		t.Run("VeNCrypt with the client certificate, RFB "+version+" client", func(t *testing.T) {
			session(t, tlsAddr, "127.0.0.1", good, version, isQEMU)
		})
	}
	t.Run("VeNCrypt, host name not checked", func(t *testing.T) {
		cfg := *good
		cfg.VerifyHostname = false
		session(t, tlsAddr, "vnc.example", &cfg, "3.8", isQEMU)
	})

	for _, tc := range []struct {
		name  string
		host  string
		cfg   *Config
		cause string
		holds func(error) bool
	}{
		{name: "no client certificate", cfg: vencrypt(&tls.Config{RootCAs: ca.Pool()}, true), cause: closedAfterTLS},
		{name: "client certificate of another CA",
			cfg:   vencrypt(&tls.Config{Certificates: []tls.Certificate{foreignCert}, RootCAs: ca.Pool()}, true),
			cause: closedAfterTLS},
		{name: "server certificate of another CA",
			cfg:   vencrypt(&tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: foreignPool}, false),
			cause: "TLS handshake with the VNC server", holds: unknownAuthority},
		{name: "host name mismatch", host: "localhost", cfg: good, cause: "TLS handshake with the VNC server",
			holds: func(err error) bool { var e x509.HostnameError; return errors.As(err, &e) }},
		{name: "auth_schemes none against VeNCrypt", cfg: noneOnly,
			cause: "offers security types [19 (VeNCrypt)]; auth_schemes allows [1 (None)]"},
	} {
		t.Run("VeNCrypt refused: "+tc.name, func(t *testing.T) {
			host := tc.host
			if host == "" {
				host = "127.0.0.1"
			}
			saw, err := refusal(t, tlsAddr, host, tc.cfg)
			wantErr(t, err, ErrSecurity, tc.cause)
			if tc.holds != nil && !tc.holds(err) {
				t.Errorf("got %v, want the x509 error inside", err)
			}
			if !saw.refused || saw.reason != refusedReason {
				t.Errorf("client saw %+v, want the refusal %q", saw, refusedReason)
			}
			t.Logf("refused: %v", err)
		})
	}

	t.Run("VNC password only, auth_schemes vencrypt", func(t *testing.T) {
		saw, err := refusal(t, addrOf(qemu.StartVNCWith(t, "password=on")), "127.0.0.1", good)
		wantErr(t, err, ErrSecurity, "offers security types [2 (VNC Authentication)]; auth_schemes allows [19 (VeNCrypt)]")
		if !saw.refused || saw.reason != refusedReason {
			t.Errorf("client saw %+v, want the refusal %q", saw, refusedReason)
		}
	})

	t.Run("no authentication, auth_schemes vencrypt,none (Nova's migration path)", func(t *testing.T) {
		cfg := *good
		cfg.AuthSchemes = []string{"vencrypt", "none"}
		session(t, addrOf(qemu.StartVNC(t)), "127.0.0.1", &cfg, "3.8", isQEMU)
	})
}
