package devstack

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// TestServiceCertificatesNameTheirRoles reads each process's certificate as
// the services do (pkg/authn): verified against the stack's CA, it speaks
// for the service's role, the agent's for its host, a proxy replica's
// under the replica's name; a service's first replica's files are also the
// service's (GRPCFlags).
func TestServiceCertificatesNameTheirRoles(t *testing.T) {
	ca, files, err := writeCerts(t.TempDir(), "127.0.0.1", map[string]string{
		ConsoleAuth: ConsoleAuth, ComputeAgent: ComputeAgent, XVPProxy: XVPProxy,
		"novnc-proxy-1": NoVNCProxy, "novnc-proxy-2": NoVNCProxy,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]authn.Identity{
		ConsoleAuth:     {Name: "consoleauth", Role: authn.RoleConsoleAuth},
		ComputeAgent:    {Name: ComputeHost, Role: authn.RoleCompute, Host: ComputeHost},
		NoVNCProxy:      {Name: "novnc-proxy-1", Role: authn.RoleProxy},
		"novnc-proxy-1": {Name: "novnc-proxy-1", Role: authn.RoleProxy},
		"novnc-proxy-2": {Name: "novnc-proxy-2", Role: authn.RoleProxy},
		XVPProxy:        {Name: "xvp-proxy", Role: authn.RoleProxy},
	}
	for service, id := range want {
		f := files[service]
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			t.Fatalf("%s: %v", service, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: "localhost"}); err != nil {
				t.Errorf("%s: not valid for %v on localhost: %v", service, usage, err)
			}
		}
		for _, src := range []authn.RoleSource{authn.RoleFromSAN, authn.RoleFromSubject} {
			got, err := authn.FromCertificate(leaf, src)
			if err != nil {
				t.Fatalf("%s (%s): %v", service, src, err)
			}
			id.Via = "certificate"
			if got != id {
				t.Errorf("%s (%s): got %+v, want %+v", service, src, got, id)
			}
		}
	}
}

// TestAPIKeyFileHoldsOnlyTheHash loads the keys file as consoleauth does.
func TestAPIKeyFileHoldsOnlyTheHash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api-keys")
	key, err := writeAPIKey(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(key))
	if want := fmt.Sprintf("%s api %s\n", APIName, hex.EncodeToString(sum[:])); string(raw) != want {
		t.Errorf("keys file: got %q, want %q", raw, want)
	}
	if strings.Contains(string(raw), key) {
		t.Fatal("the keys file holds the key itself")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("keys file mode: got %v, want 0600", fi.Mode().Perm())
	}
	keys, err := authn.LoadKeyFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := keys.Lookup(key)
	if !ok || id.Role != authn.RoleAPI || id.Name != APIName {
		t.Fatalf("consoleauth's reading of the key: got %+v, %v; want %s with role api", id, ok, APIName)
	}
}

// TestBearerOnlyToTheRESTAPI: the API key goes to the REST API's address
// only, never to another server, and a caller's own header stands.
func TestBearerOnlyToTheRESTAPI(t *testing.T) {
	got := map[string]string{}
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got[name] = r.Header.Get("Authorization") })
	}
	rest := httptest.NewServer(handler("rest"))
	defer rest.Close()
	other := httptest.NewServer(handler("other"))
	defer other.Close()
	u, _ := url.Parse(rest.URL)
	c := &http.Client{Transport: bearer{key: "vgk_test", host: u.Host, next: http.DefaultTransport}}

	for _, target := range []string{rest.URL, other.URL} {
		resp, err := c.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if got["rest"] != "Bearer vgk_test" || got["other"] != "" {
		t.Fatalf("Authorization: got REST %q, other server %q; want the key to the REST API only", got["rest"], got["other"])
	}
	req, _ := http.NewRequest(http.MethodGet, rest.URL, nil)
	req.Header.Set("Authorization", "Bearer mine")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got["rest"] != "Bearer mine" {
		t.Fatalf("a caller's own Authorization: got %q, want it kept", got["rest"])
	}
}

// TestLineWriterCutsLongLines: what goes to Options.Logs is cut per line,
// in whatever pieces the pipe delivers it, and says how much was cut.
func TestLineWriterCutsLongLines(t *testing.T) {
	var out testlog.Buffer
	lw := &lineWriter{prefix: "consoleauth", out: &out}
	huge := strings.Repeat("x", 2<<20)
	input := "first\n" + huge + "\nlast without newline"
	for chunk := range chunks(input, 4096) {
		lw.Write([]byte(chunk))
	}
	lw.flush()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3", len(lines))
	}
	if want := fmt.Sprintf("%-14s first", "consoleauth"); lines[0] != want {
		t.Errorf("line 1: got %q, want %q", lines[0], want)
	}
	if want := fmt.Sprintf("… [%d more bytes]", len(huge)-MaxShownLine); !strings.HasSuffix(lines[1], want) || len(lines[1]) > MaxShownLine+64 {
		t.Errorf("long line: got %d bytes ending %q, want it cut at %d bytes ending %q", len(lines[1]), lines[1][max(0, len(lines[1])-40):], MaxShownLine, want)
	}
	if !strings.HasSuffix(lines[2], "last without newline") {
		t.Errorf("last line: got %q", lines[2])
	}
}

// chunks splits s into pieces of at most n bytes.
func chunks(s string, n int) func(func(string) bool) {
	return func(yield func(string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// TestPickFreeBelowEphemeral: ports left 0 get distinct free ports below the
// kernel's ephemeral range (no outgoing connection takes them meanwhile);
// ports given stay.
func TestPickFreeBelowEphemeral(t *testing.T) {
	w := &World{Options: Options{Host: "127.0.0.1"}}
	ports := make([]int, 20)
	ports[3] = 6080
	var ptrs []*int
	for i := range ports {
		ptrs = append(ptrs, &ports[i])
	}
	if err := w.pickFree(ptrs); err != nil {
		t.Fatal(err)
	}
	lo, hi := belowEphemeral()
	seen := map[int]bool{}
	for i, p := range ports {
		if i == 3 {
			if p != 6080 {
				t.Errorf("a given port: got %d, want 6080 kept", p)
			}
			continue
		}
		if p < lo || p >= hi || seen[p] {
			t.Errorf("port %d: want distinct, in [%d, %d)", p, lo, hi)
		}
		seen[p] = true
	}
}
