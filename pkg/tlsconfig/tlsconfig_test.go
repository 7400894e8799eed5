package tlsconfig

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vncgate/vncgate/testkit/certs"
)

func files(t *testing.T) Files {
	t.Helper()
	f, _ := certs.TestFiles(t, "127.0.0.1")
	return Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// combined writes cert and key into one PEM, as Nova's cert option may be.
func combined(t *testing.T, f Files) string {
	t.Helper()
	c, err := os.ReadFile(f.Cert)
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.ReadFile(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "self.pem")
	if err := os.WriteFile(p, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFiles(t *testing.T) {
	f := files(t)
	if c, err := (Files{}).Server(); c != nil || err != nil {
		t.Errorf("no files, server: got %v, %v; want plaintext", c, err)
	}
	if c, err := (Files{}).Client(); c != nil || err != nil {
		t.Errorf("no files, client: got %v, %v; want plaintext", c, err)
	}
	srv, err := f.Server()
	if err != nil || srv.ClientAuth != tls.RequireAndVerifyClientCert || len(srv.Certificates) != 1 {
		t.Errorf("server with a CA: got %+v, %v; want mTLS", srv, err)
	}
	onlyCA, err := Files{CA: f.CA}.Client()
	if err != nil || onlyCA.RootCAs == nil || len(onlyCA.Certificates) != 0 {
		t.Errorf("client with only a CA: got %+v, %v", onlyCA, err)
	}
	both := Files{Cert: combined(t, f), CA: f.CA}
	if c, err := both.Server(); err != nil || len(c.Certificates) != 1 {
		t.Errorf("certificate and key in one file: got %v", err)
	}
	for _, tc := range []struct {
		name string
		f    Files
		want string
	}{
		{"key without a certificate", Files{Key: f.Key, CA: f.CA}, "a key without a certificate"},
		{"certificate without its key", Files{Cert: f.Cert}, "it must hold the private key too"},
		{"CA that is no certificate", Files{Cert: f.Cert, Key: f.Key, CA: f.Key}, "no certificate in"},
		{"missing file", Files{Cert: "/nonexistent.pem", Key: f.Key}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.f.Client()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestGRPCCredentials: the server and dial options speak mutual TLS with
// each other, refuse a client without a certificate, and are plaintext
// without files.
func TestGRPCCredentials(t *testing.T) {
	f := files(t)
	for _, tc := range []struct {
		name           string
		server, client Files
		wantOK         bool
	}{
		{"plaintext", Files{}, Files{}, true},
		{"mutual TLS", f, f, true},
		{"client without a certificate", f, Files{CA: f.CA}, false},
		{"plaintext client to a TLS server", f, Files{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			so, err := tc.server.ServerOption()
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(so)
			healthpb.RegisterHealthServer(srv, health.NewServer())
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l)
			t.Cleanup(srv.Stop)

			do, err := tc.client.DialOption()
			if err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient(l.Addr().String(), do)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if (err == nil) != tc.wantOK {
				t.Errorf("health check: got %v, want ok=%v", err, tc.wantOK)
			}
		})
	}
}

func TestMinVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint16
		err  bool
	}{
		{"", tls.VersionTLS12, false},
		{"default", tls.VersionTLS12, false},
		{"tlsv1_1", 0, true},
		{"tlsv1_2", tls.VersionTLS12, false},
		{"TLSv1_3", tls.VersionTLS13, false},
		{"tlsv1_0", 0, true},
		{"sslv3", 0, true},
		{"1.2", 0, true},
	} {
		got, err := MinVersion(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("MinVersion(%q): got %x, %v; want %x, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestCipherSuites(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    []uint16
		ignored []string
		err     bool
	}{
		{"empty: Go's defaults", "", nil, nil, false},
		{"OpenSSL names, in order", "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
			[]uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, nil, false},
		{"IANA names, commas", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
			[]uint16{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, nil, false},
		{"Nova's example expression", "kEECDH+aECDSA+AES:kEECDH+AES+aRSA:kEDH+aRSA+AES",
			[]uint16{
				tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
				tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
				tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
				tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			}, []string{"kEDH+aRSA+AES"}, false},
		{"removal and moving", "ECDHE+AESGCM:ECDHE+CHACHA20:!aECDSA:+AES256",
			[]uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}, nil, false},
		{"! removes for good", "!AES128:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:@STRENGTH",
			[]uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}, nil, false},
		{"Mozilla's list keeps what Go has", "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256:DES-CBC3-SHA",
			[]uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, []string{"DHE-RSA-AES128-GCM-SHA256", "DES-CBC3-SHA"}, false},
		{"nothing Go has", "DHE-RSA-AES128-GCM-SHA256:RC4", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ignored, err := CipherSuites(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("error: got %v, want %v", err, tc.err)
			}
			if tc.err {
				return
			}
			if !reflect.DeepEqual(got, tc.want) || !reflect.DeepEqual(ignored, tc.ignored) {
				t.Errorf("got %s, ignored %q\nwant %s, ignored %q", names(got), ignored, names(tc.want), tc.ignored)
			}
		})
	}
}

func names(ids []uint16) string {
	var s []string
	for _, id := range ids {
		s = append(s, tls.CipherSuiteName(id))
	}
	return strings.Join(s, ":")
}

// TestPublic: the public port honours ssl_minimum_version and ssl_ciphers
// in a real handshake.
func TestPublic(t *testing.T) {
	f, pool := certs.TestFiles(t, "127.0.0.1")
	for _, tc := range []struct {
		name   string
		p      Public
		client *tls.Config
		wantOK bool
	}{
		{"default accepts TLS 1.2", Public{Cert: f.Cert, Key: f.Key}, &tls.Config{MaxVersion: tls.VersionTLS12}, true},
		{"tlsv1_3 refuses TLS 1.2", Public{Cert: f.Cert, Key: f.Key, MinimumVersion: "tlsv1_3"}, &tls.Config{MaxVersion: tls.VersionTLS12}, false},
		{"ciphers are enforced", Public{Cert: f.Cert, Key: f.Key, Ciphers: "ECDHE-ECDSA-AES256-GCM-SHA384"},
			&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, false},
		{"ciphers allow theirs", Public{Cert: f.Cert, Key: f.Key, Ciphers: "ECDHE-ECDSA-AES256-GCM-SHA384"},
			&tls.Config{MaxVersion: tls.VersionTLS12}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.p.Config("http/1.1")
			if err != nil {
				t.Fatal(err)
			}
			l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err == nil {
					_ = c.(*tls.Conn).Handshake()
					c.Close()
				}
			}()
			tc.client.RootCAs = pool
			c, err := tls.Dial("tcp", l.Addr().String(), tc.client)
			if err == nil {
				c.Close()
			}
			if (err == nil) != tc.wantOK {
				t.Errorf("handshake: got %v, want ok=%v", err, tc.wantOK)
			}
		})
	}
	if c, err := (Public{}).Config(); c != nil || err != nil {
		t.Errorf("no cert: got %v, %v; want no TLS", c, err)
	}
	if _, err := (Public{Key: f.Key}).Check(); err == nil {
		t.Error("key without cert: got no error")
	}
	if _, err := (Public{Cert: f.Cert, MinimumVersion: "sslv3"}).Check(); err == nil {
		t.Error("bad ssl_minimum_version: got no error")
	}
}

func TestPublicWarnings(t *testing.T) {
	w, err := Public{Cert: "c.pem", Ciphers: "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256"}.Check()
	if err != nil || len(w) != 1 || !strings.Contains(w[0], "DHE-RSA-AES128-GCM-SHA256") {
		t.Errorf("got %q, %v; want the cipher warning", w, err)
	}
	if _, err := (Public{Cert: "c.pem", MinimumVersion: "tlsv1_1"}).Check(); err == nil || !strings.Contains(err.Error(), "RFC 8996") {
		t.Errorf("tlsv1_1: got %v, want TLS 1.1 refused", err)
	}
}
