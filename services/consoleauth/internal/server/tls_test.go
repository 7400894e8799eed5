package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"strings"
	"testing"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// TestMutualTLS runs consoleauth with grpc_cert/grpc_key/grpc_ca: its gRPC
// server requires a client certificate, its calls to an agent that requires
// one succeed, and REST keeps working through the in-process gateway.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	files := testworld.TLSFiles(t)
	w := newWorld(t, func(c *server.Config) { c.GRPCTLS = files })
	secure := testworld.StartAgentTLS(t, w.cli, "compute-tls", files)
	secure.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	req := &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
		RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"}}

	clientCfg, err := files.Client()
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tests := []struct {
		name   string
		creds  credentials.TransportCredentials
		wantOK bool
	}{
		{name: "client certificate", creds: credentials.NewTLS(clientCfg), wantOK: true},
		{name: "TLS without client certificate", creds: credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})},
		{name: "plaintext", creds: insecure.NewCredentials()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient(w.srv.GRPCAddr(), grpc.WithTransportCredentials(tt.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_, err = consoleauthv1.NewConsoleAuthServiceClient(conn).GetConsoleURL(ctx, req)
			if (err == nil) != tt.wantOK {
				t.Errorf("GetConsoleURL: got error %v, want success %v", err, tt.wantOK)
			}
		})
	}
	if code, m := w.do(t, "POST", "/v2.1/servers/"+vm+"/remote-consoles",
		`{"remote_console": {"protocol": "vnc", "type": "novnc"}}`); code != http.StatusOK {
		t.Errorf("REST with mTLS on gRPC: got %d %v, want 200", code, m)
	}
}

// TestRESTMutualTLS: with rest_cert/rest_key/rest_ca the REST API, which
// mints and revokes tokens, answers only callers with a certificate.
func TestRESTMutualTLS(t *testing.T) {
	t.Parallel()
	files := testworld.TLSFiles(t)
	w := newWorld(t, func(c *server.Config) { c.RESTTLS = files })
	agent := testworld.StartAgent(t, w.cli, "compute-rest-tls")
	agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})

	clientCfg, err := files.Client()
	if err != nil {
		t.Fatal(err)
	}
	noCert := clientCfg.Clone()
	noCert.Certificates = nil
	tests := []struct {
		name   string
		url    string
		tls    *tls.Config
		wantOK bool
	}{
		{"client certificate", "https://" + w.srv.RESTAddr(), clientCfg, true},
		{"TLS without client certificate", "https://" + w.srv.RESTAddr(), noCert, false},
		{"plaintext", "http://" + w.srv.RESTAddr(), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: tt.tls}}
			resp, err := c.Post(tt.url+"/v2.1/servers/"+vm+"/remote-consoles", "application/json",
				strings.NewReader(`{"remote_console": {"protocol": "vnc", "type": "novnc"}}`))
			ok := err == nil && resp.StatusCode == http.StatusOK
			if err == nil {
				resp.Body.Close()
			}
			if ok != tt.wantOK {
				t.Errorf("POST remote-consoles: got ok=%v (err %v), want %v", ok, err, tt.wantOK)
			}
		})
	}
}
