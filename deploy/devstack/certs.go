package devstack

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
)

// certValidity is how long the throwaway certificates live: long enough for
// a `make run` session, short enough that a leaked one soon stops working.
const certValidity = 24 * time.Hour

// APIName is the name the cloud's API layer has in the stack: its bearer
// key's name in the keys file and its client certificate's common name.
const APIName = "devstack-api"

// Identity is who each service's certificate speaks for (pkg/authn): one
// certificate per process, presented as gRPC server and as mTLS client. A
// compute agent's common name is its host name, the only host it may act
// for.
func Identity(service string) certs.Identity {
	switch service {
	case ConsoleAuth:
		return certs.Identity{Name: ConsoleAuth, Role: string(authn.RoleConsoleAuth)}
	case ComputeAgent:
		return certs.Identity{Name: ComputeHost, Role: string(authn.RoleCompute)}
	case NoVNCProxy, XVPProxy:
		return certs.Identity{Name: service, Role: string(authn.RoleProxy)}
	}
	return certs.Identity{Name: service}
}

// writeCerts makes the stack's CA and writes the certificate, key and the
// CA certificate of each process (names: process name → service) into
// dir/<process>/, for localhost, 127.0.0.1, ::1 and host. The CA's key
// stays in memory (World.CA), never on disk.
func writeCerts(dir, host string, names map[string]string) (*certs.CA, map[string]tlsconfig.Files, error) {
	ca, err := certs.NewCA("vncgate devstack CA", certValidity)
	if err != nil {
		return nil, nil, err
	}
	files := map[string]tlsconfig.Files{}
	for name, service := range names {
		f, err := ca.WriteIdentityFiles(filepath.Join(dir, name), replicaIdentity(service, name), "localhost", "127.0.0.1", "::1", host)
		if err != nil {
			return nil, nil, fmt.Errorf("%s certificate: %w", name, err)
		}
		files[name] = tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
		if _, ok := names[service]; !ok && name == service+"-1" {
			files[service] = files[name] // GRPCFlags(service): the first replica's
		}
	}
	return ca, files, nil
}

// replicaIdentity is Identity(service), a proxy replica named after
// itself, an added agent (AddAgent) after its host.
func replicaIdentity(service, name string) certs.Identity {
	id := Identity(service)
	switch {
	case service == NoVNCProxy || service == XVPProxy:
		id.Name = name
	case service == ComputeAgent && name != ComputeAgent:
		id.Name = strings.TrimPrefix(name, ComputeAgent+"-")
	}
	return id
}

// writeAPIKey makes a bearer key for the API layer (authn.NewKey) and
// writes the keys file consoleauth reads ([vncgate] api_keys_file), which
// holds only the key's SHA-256. The key itself is returned, for
// World.RESTClient and the banner's curl.
func writeAPIKey(path string) (string, error) {
	key, line, err := authn.NewKey(APIName, authn.RoleAPI)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return key, os.WriteFile(path, []byte(line+"\n"), 0o600)
}

// bearer adds the API layer's key to requests for one host:port (the REST
// API), so the key never goes anywhere else (a redirect, another service).
type bearer struct {
	key, host string
	next      http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != b.host || r.Header.Get("Authorization") != "" {
		return b.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// ClientTLS is a client configuration for the stack's services: it trusts
// the stack's CA and presents a new certificate, issued by that CA, that
// speaks for role under name (for a compute agent, its host name). Tests
// use it to call each API as any role.
func (w *World) ClientTLS(role authn.Role, name string) (*tls.Config, error) {
	cert, err := w.CA.IssueIdentity(certs.Identity{Name: name, Role: string(role)}, "localhost")
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: w.caPool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
