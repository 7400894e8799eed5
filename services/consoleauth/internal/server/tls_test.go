package server_test

import (
	"crypto/tls"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestMutualTLS: consoleauth's gRPC server (grpc_cert/grpc_key/grpc_ca)
// requires a client certificate, its calls to an agent that requires
// consoleauth's certificate succeed, and REST keeps working through the
// in-process gateway.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.startAgent(t, "compute-tls").AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	req := &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
		RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}}

	apiTLS := w.pki.TLS(t, "nova-api", authn.RoleAPI)
	noCert := apiTLS.Clone()
	noCert.Certificates = nil
	tests := []struct {
		name  string
		creds credentials.TransportCredentials
		want  codes.Code
	}{
		{name: "client certificate", creds: credentials.NewTLS(apiTLS), want: codes.OK},
		{name: "TLS without client certificate", creds: credentials.NewTLS(noCert), want: codes.Unavailable},
		{name: "plaintext", creds: insecure.NewCredentials(), want: codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient(w.srv.GRPCAddr(), grpc.WithTransportCredentials(tt.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = consoleauthv1.NewConsoleAuthServiceClient(conn).GetConsoleURL(ctx, req)
			if got := status.Code(err); got != tt.want {
				t.Errorf("GetConsoleURL: got %v, want %s", err, tt.want)
			}
		})
	}
	if code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles",
		`{"remote_console": {"protocol": "vnc", "type": "novnc"}}`); code != http.StatusOK {
		t.Errorf("REST with mTLS on gRPC: got %d %v, want 200", code, m)
	}
}

// TestAgentRefusesOtherRoles: consoleauth presents its consoleauth
// certificate to the agents; an agent answers only that role, so
// consoleauth with a proxy's certificate cannot mint.
func TestAgentRefusesOtherRoles(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	wrong := newWorld(t, func(c *server.Config) { c.GRPCTLS = w.pki.Files(t, "impostor", authn.RoleProxy) })
	// wrong's etcd is its own: register w's agent there too.
	wrongAgent := testworld.StartAgentTLS(t, wrong.cli, "compute-9", w.pki.Files(t, "compute-9", authn.RoleCompute))
	wrongAgent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	code, m := wrong.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`)
	if code != http.StatusInternalServerError || !strings.Contains(str(t, m, "computeFault", "message"), "role proxy may not call GetConsole") {
		t.Errorf("consoleauth with a proxy certificate: got %d %v, want 500 saying the agent refused the role", code, m)
	}
	if code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles", `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`); code != http.StatusOK {
		t.Errorf("consoleauth with its certificate: got %d %v, want 200", code, m)
	}
}

// TestRESTMutualTLS: with rest_cert/rest_key/rest_ca the REST API takes
// callers by certificate, with the role the certificate names; a TLS
// caller without one needs a bearer key.
func TestRESTMutualTLS(t *testing.T) {
	t.Parallel()
	var pki *testworld.PKI
	w := newWorld(t, func(c *server.Config) {
		pki = testworld.NewPKI(t)
		c.RESTTLS = pki.Files(t, "consoleauth-rest", authn.RoleConsoleAuth)
	})
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})

	noCert := &tls.Config{RootCAs: pki.CA.Pool(), MinVersion: tls.VersionTLS12}
	tests := []struct {
		name   string
		url    string
		tls    *tls.Config
		bearer string
		want   int
	}{
		{"api certificate", "https://" + w.srv.RESTAddr(), pki.TLS(t, "nova-api", authn.RoleAPI), "", http.StatusOK},
		{"mint certificate", "https://" + w.srv.RESTAddr(), pki.TLS(t, "horizon", authn.RoleMint), "", http.StatusOK},
		{"proxy certificate", "https://" + w.srv.RESTAddr(), pki.TLS(t, "novnc-1", authn.RoleProxy), "", http.StatusForbidden},
		{"TLS without certificate or key", "https://" + w.srv.RESTAddr(), noCert, "", http.StatusUnauthorized},
		{"TLS without certificate, bearer key", "https://" + w.srv.RESTAddr(), noCert, w.keys["nova-api"], http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: tt.tls}}
			req, err := http.NewRequest("POST", tt.url+"/v2.1/servers/"+vm+"/remote-consoles",
				strings.NewReader(`{"remote_console": {"protocol": "vnc", "type": "novnc"}}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tt.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tt.bearer)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("POST remote-consoles: got %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	// A certificate of another CA does not get through the handshake.
	stranger := testworld.NewPKI(t).TLS(t, "nova-api", authn.RoleAPI)
	stranger.RootCAs = pki.CA.Pool()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: stranger}}
	if resp, err := c.Get("https://" + w.srv.RESTAddr() + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("certificate of another CA: got %d, want a refused handshake", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + w.srv.RESTAddr() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plaintext to the TLS listener: got 200")
		}
	}
}

// TestCertificateRotation: consoleauth's gRPC certificate and CA files are
// replaced by a new CA's while it runs; new connections use them: a
// client of the new CA is served, one of the old CA refused.
func TestCertificateRotation(t *testing.T) {
	t.Parallel()
	var files tlsconfig.Files
	w := newWorld(t, func(c *server.Config) { files = c.GRPCTLS })
	ctx := testworld.Ctx(t)
	check := func(pki *testworld.PKI) error {
		conn := pki.Dial(t, w.srv.GRPCAddr(), "nova-api", authn.RoleAPI)
		_, err := consoleauthv1.NewConsoleAuthServiceClient(conn).GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: unknownToken})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	}
	if err := check(w.pki); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	next := testworld.NewPKI(t)
	fresh := next.Files(t, "consoleauth-1", authn.RoleConsoleAuth)
	for _, p := range [][2]string{{fresh.Key, files.Key}, {fresh.Cert, files.Cert}, {fresh.CA, files.CA}} {
		if err := os.Rename(p[0], p[1]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second) // bounds a hang: files are read again within a second
	for err := check(next); err != nil; err = check(next) {
		if time.Now().After(deadline) {
			t.Fatalf("a client of the new CA after the rotation: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := check(w.pki); status.Code(err) != codes.Unavailable {
		t.Errorf("a client of the old CA after the rotation: got %v, want a refused handshake", err)
	}
}
