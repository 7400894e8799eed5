package rfbproxy

import (
	"strings"
	"testing"

	"github.com/vncgate/vncgate/testkit/certs"
)

func TestOptionsConfig(t *testing.T) {
	files, _ := certs.TestFiles(t, "proxy.example")
	for _, tc := range []struct {
		name    string
		opts    Options
		wantNil bool   // relay bytes untouched
		tls     bool   // a VeNCrypt client configuration with a certificate
		err     string // part of the error; "" for none
	}{
		{name: "unset: bytes relayed", wantNil: true},
		{name: "none", opts: Options{AuthSchemes: []string{"none"}}},
		{name: "vencrypt with a client certificate", opts: Options{AuthSchemes: []string{"vencrypt", "none"},
			ClientCert: files.Cert, ClientKey: files.Key, CACerts: files.CA, VerifyHostname: true}, tls: true},
		{name: "vencrypt without a CA", opts: Options{AuthSchemes: []string{"vencrypt"}}, err: "vencrypt_ca_certs is required"},
		{name: "a scheme vncgate does not speak", opts: Options{AuthSchemes: []string{"vnc"}}, err: `"vnc" is not a scheme`},
		{name: "certificate without key", opts: Options{AuthSchemes: []string{"vencrypt"}, ClientCert: files.Cert, CACerts: files.CA},
			err: "go together"},
		{name: "vencrypt files without auth_schemes", opts: Options{CACerts: files.CA}, err: "auth_schemes is empty"},
		{name: "unreadable CA", opts: Options{AuthSchemes: []string{"vencrypt"}, CACerts: "/nonexistent/ca.pem"}, err: "vencrypt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.opts.Config()
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error with %q", err, tc.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.wantNil != (cfg == nil):
				t.Fatalf("got config %+v, want nil: %v", cfg, tc.wantNil)
			case cfg == nil:
				return
			}
			if got := cfg.TLS != nil && len(cfg.TLS.Certificates) == 1 && cfg.TLS.RootCAs != nil; got != tc.tls {
				t.Errorf("VeNCrypt client TLS with certificate and CA: got %v, want %v", got, tc.tls)
			}
			if cfg.VerifyHostname != tc.opts.VerifyHostname || len(cfg.AuthSchemes) != len(tc.opts.AuthSchemes) {
				t.Errorf("got %+v from %+v", cfg, tc.opts)
			}
		})
	}
}
