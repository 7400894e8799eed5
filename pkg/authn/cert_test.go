package authn

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/testkit/certs"
)

func uris(t *testing.T, raw ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, r := range raw {
		u, err := url.Parse(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestFromCertificate(t *testing.T) {
	subject := func(cn string, ou ...string) pkix.Name { return pkix.Name{CommonName: cn, OrganizationalUnit: ou} }
	tests := []struct {
		name    string
		cert    *x509.Certificate
		src     RoleSource
		want    Identity
		wantErr string
	}{
		{name: "role from the URI SAN", cert: &x509.Certificate{Subject: subject("novnc-1"), URIs: uris(t, "urn:vncgate:role:proxy")},
			src: RoleFromSAN, want: Identity{Name: "novnc-1", Role: RoleProxy, Via: "certificate"}},
		{name: "compute agent: its host is its name", cert: &x509.Certificate{Subject: subject("compute-7"), URIs: uris(t, "https://example.com/x", "urn:vncgate:role:compute")},
			src: RoleFromSAN, want: Identity{Name: "compute-7", Role: RoleCompute, Host: "compute-7", Via: "certificate"}},
		{name: "URN scheme in capitals", cert: &x509.Certificate{Subject: subject("api-1"), URIs: uris(t, "URN:vncgate:role:api")},
			src: RoleFromSAN, want: Identity{Name: "api-1", Role: RoleAPI, Via: "certificate"}},
		{name: "role from the first OU", cert: &x509.Certificate{Subject: subject("consoleauth-1", "consoleauth", "api")},
			src: RoleFromSubject, want: Identity{Name: "consoleauth-1", Role: RoleConsoleAuth, Via: "certificate"}},
		{name: "san source ignores the OU", cert: &x509.Certificate{Subject: subject("x", "api")},
			src: RoleFromSAN, wantErr: "no role: want a URI SAN urn:vncgate:role:ROLE"},
		{name: "subject source ignores the SAN", cert: &x509.Certificate{Subject: subject("x"), URIs: uris(t, "urn:vncgate:role:api")},
			src: RoleFromSubject, wantErr: "no role: want the subject's first OU"},
		{name: "unknown role", cert: &x509.Certificate{Subject: subject("x"), URIs: uris(t, "urn:vncgate:role:root")},
			src: RoleFromSAN, wantErr: `unknown role "root": want one of api, mint, proxy, compute, consoleauth`},
		{name: "two roles", cert: &x509.Certificate{Subject: subject("x"), URIs: uris(t, "urn:vncgate:role:api", "urn:vncgate:role:proxy")},
			src: RoleFromSAN, wantErr: "2 role URI SANs"},
		{name: "no common name", cert: &x509.Certificate{URIs: uris(t, "urn:vncgate:role:api")},
			src: RoleFromSAN, wantErr: "has no subject common name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromCertificate(tt.cert, tt.src)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want ErrUnauthenticated containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestFromIssuedCertificate reads the certificates testkit/certs issues,
// as the dev stack and every test will, under both role sources.
func TestFromIssuedCertificate(t *testing.T) {
	ca := certs.TestCA(t)
	c, err := ca.IssueIdentity(certs.Identity{Name: "compute-3", Role: "compute"}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []RoleSource{RoleFromSAN, RoleFromSubject} {
		id, err := FromCertificate(c.Leaf, src)
		want := Identity{Name: "compute-3", Role: RoleCompute, Host: "compute-3", Via: "certificate"}
		if err != nil || id != want {
			t.Errorf("%s: got %+v, %v; want %+v", src, id, err, want)
		}
	}
}

func TestParseRoleSource(t *testing.T) {
	for in, want := range map[string]RoleSource{"": RoleFromSAN, "san": RoleFromSAN, "subject": RoleFromSubject} {
		if got, err := ParseRoleSource(in); err != nil || got != want {
			t.Errorf("ParseRoleSource(%q): got %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseRoleSource("ou"); err == nil || !strings.Contains(err.Error(), "want san or subject") {
		t.Errorf("ParseRoleSource(ou): got %v, want an error", err)
	}
}
