// Package devstack runs the whole of vncgate on one machine: an embedded
// etcd, the demo VNC server, and the four services as separate processes,
// wired together on loopback. `make run` and the end-to-end tests use it;
// production runs each service on its own (see deploy/README.md).
package devstack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/etcdserver"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// Services, in start order.
const (
	ConsoleAuth  = "consoleauth"
	ComputeAgent = "compute-agent"
	NoVNCProxy   = "novnc-proxy"
	XVPProxy     = "xvp-proxy"
)

// DemoUUID is the demo instance's UUID: fixed, so the printed curl works
// across runs.
const DemoUUID = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"

// ComputeHost is the name the one compute agent registers under.
const ComputeHost = "devstack-compute"

// Instance is an entry of the static inventory the agent serves.
type Instance struct {
	UUID               string `json:"uuid"`
	VNCHost            string `json:"vnc_host"`
	VNCPort            int    `json:"vnc_port"`
	InternalAccessPath string `json:"internal_access_path,omitempty"`
	State              string `json:"state"`
}

// Options says what to run and where.
type Options struct {
	// Bin is the folder holding the service binaries.
	Bin string
	// Dir holds etcd data, the inventory and logs.
	Dir string
	// Ports of the services; 0 picks a free port. Default returns Nova's.
	Ports Ports
	// Host is the address every service listens on, 127.0.0.1 by default.
	Host string
	// TokenTTL of consoleauth; 0 keeps its default (600 s).
	TokenTTL time.Duration
	// Instances besides the demo one, which is always first.
	Instances []Instance
	// Args adds flags per service (key: service name), after devstack's own.
	Args map[string][]string
	// Skip leaves services out (e.g. a proxy under test started in-process).
	Skip map[string]bool
	// Logs receives every service's output, each line prefixed by its name.
	Logs io.Writer
	// TLS generates a throwaway CA and certificate in Dir/tls and starts
	// every service with them: mutual TLS on all gRPC links, TLS only on
	// both proxies' public ports (novnc-proxy with ssl_only), https base
	// URLs, and mutual TLS on consoleauth's REST API (the cloud's API layer
	// presents a certificate). etcd stays plaintext (embedded, loopback only).
	TLS bool
}

// Ports of one stack.
type Ports struct {
	Etcd, ConsoleAuthGRPC, ConsoleAuthREST, ComputeAgent, NoVNC, XVP int
}

// DefaultPorts are DESIGN.md's defaults.
func DefaultPorts() Ports {
	return Ports{Etcd: 2379, ConsoleAuthGRPC: 6090, ConsoleAuthREST: 6091, ComputeAgent: 6092, NoVNC: 6080, XVP: 6081}
}

// World is a running stack.
type World struct {
	Options
	Etcd    *etcdserver.Server
	Client  *clientv3.Client
	Demo    *rfb.Server
	DemoVNC string // the demo VNC server's host:port
	// Certs are the PEM files of Options.TLS (Cert doubles as server and
	// client certificate); empty without TLS.
	Certs tlsconfig.Files

	caPool     *x509.CertPool
	httpClient *http.Client
	restClient *http.Client
	procs      []*proc
	demoL      net.Listener
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Addr is host:port on the stack's host.
func (w *World) Addr(port int) string { return net.JoinHostPort(w.Host, strconv.Itoa(port)) }

// RESTURL is consoleauth's REST base, e.g. http://127.0.0.1:6091 (https
// with Options.TLS).
func (w *World) RESTURL() string { return w.scheme() + "://" + w.Addr(w.Ports.ConsoleAuthREST) }

// RESTClient is the HTTP client of the cloud's API layer: with Options.TLS
// it trusts the stack's CA and presents the client certificate REST requires.
func (w *World) RESTClient() *http.Client { return w.restClient }

// NoVNCBaseURL is the console page's URL, the base of novnc console URLs
// (https with Options.TLS).
func (w *World) NoVNCBaseURL() string {
	return w.scheme() + "://" + w.Addr(w.Ports.NoVNC) + "/vnc_lite.html"
}

// XVPBaseURL is the base of xvpvnc console URLs (https with Options.TLS).
func (w *World) XVPBaseURL() string {
	return w.scheme() + "://" + w.Addr(w.Ports.XVP) + "/console"
}

func (w *World) scheme() string {
	if w.TLS {
		return "https"
	}
	return "http"
}

// CAPool holds the CA of Options.TLS; nil without TLS.
func (w *World) CAPool() *x509.CertPool { return w.caPool }

// HTTPClient is an HTTP client that trusts the stack's CA (with
// Options.TLS), for the proxies' https endpoints and the REST API.
func (w *World) HTTPClient() *http.Client { return w.httpClient }

// ClientTLS is a client configuration for the stack's services: it trusts
// the CA and presents the service certificate, as the services do to each
// other. Without Options.TLS it returns nil.
func (w *World) ClientTLS() (*tls.Config, error) { return w.Certs.Client() }

// Start runs a stack and returns when every service is ready.
func Start(ctx context.Context, opts Options) (_ *World, err error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Logs == nil {
		opts.Logs = io.Discard
	}
	if opts.Bin, err = filepath.Abs(opts.Bin); err != nil {
		return nil, err
	}
	w := &World{Options: opts, httpClient: http.DefaultClient, restClient: http.DefaultClient}
	defer func() {
		if err != nil {
			w.Stop()
		}
	}()
	if err := w.pickPorts(); err != nil {
		return nil, err
	}
	if opts.TLS {
		if err := w.setUpTLS(); err != nil {
			return nil, err
		}
	}
	if w.Etcd, err = etcdserver.Start(filepath.Join(opts.Dir, "etcd"), w.Addr(w.Ports.Etcd), "127.0.0.1:0"); err != nil {
		return nil, err
	}
	w.Client, err = etcdclient.New([]string{w.Etcd.Endpoint}, tlsconfig.Files{})
	if err != nil {
		return nil, err
	}
	if err := w.startDemo(); err != nil {
		return nil, err
	}
	inventory, err := w.writeInventory()
	if err != nil {
		return nil, err
	}

	etcd := "--etcd_endpoints=" + w.Etcd.Endpoint
	consoleauth := w.Addr(w.Ports.ConsoleAuthGRPC)
	ttl := []string{}
	if opts.TokenTTL > 0 {
		ttl = append(ttl, fmt.Sprintf("--token_ttl=%d", int(opts.TokenTTL.Seconds())))
	}
	// mTLS on every gRPC link: consoleauth's and the agent's servers, and
	// every client of consoleauth (agent, proxies) and of the agent
	// (consoleauth). Each service presents the same certificate. TLS on the
	// proxies' public ports; novnc-proxy refuses plain HTTP.
	var grpcTLS, restTLS, novncTLS, xvpTLS []string
	novncHealth := "http://" + w.Addr(w.Ports.NoVNC) + "/healthz"
	xvpReady := w.tcpReady(w.Addr(w.Ports.XVP))
	if opts.TLS {
		grpcTLS = []string{"--grpc_cert=" + w.Certs.Cert, "--grpc_key=" + w.Certs.Key, "--grpc_ca=" + w.Certs.CA}
		restTLS = []string{"--rest_cert=" + w.Certs.Cert, "--rest_key=" + w.Certs.Key, "--rest_ca=" + w.Certs.CA}
		novncTLS = []string{"--cert=" + w.Certs.Cert, "--key=" + w.Certs.Key, "--ssl_only"}
		xvpTLS = []string{"--cert=" + w.Certs.Cert, "--key=" + w.Certs.Key}
		novncHealth = "https://" + w.Addr(w.Ports.NoVNC) + "/healthz"
		xvpReady = w.tlsReady(w.Addr(w.Ports.XVP))
	}
	starts := []struct {
		name  string
		args  []string
		ready func(context.Context) error
	}{
		{ConsoleAuth, concat([]string{
			"--grpc_listen=" + consoleauth,
			"--rest_listen=" + w.Addr(w.Ports.ConsoleAuthREST),
			etcd,
			"--novncproxy_base_url=" + w.NoVNCBaseURL(),
			"--xvpvncproxy_base_url=" + w.XVPBaseURL(),
		}, ttl, grpcTLS, restTLS), httpReady(w.restClient, w.RESTURL()+"/healthz")},
		{ComputeAgent, concat([]string{
			"--grpc_listen=" + w.Addr(w.Ports.ComputeAgent),
			"--host=" + ComputeHost,
			etcd,
			"--driver=static",
			"--inventory_file=" + inventory,
			"--consoleauth_address=" + consoleauth,
			"--registration_ttl=5",
		}, grpcTLS), w.agentReady},
		{NoVNCProxy, concat([]string{
			"--novncproxy_host=" + w.Host,
			"--novncproxy_port=" + strconv.Itoa(w.Ports.NoVNC),
			"--novncproxy_base_url=" + w.NoVNCBaseURL(),
			"--consoleauth_address=" + consoleauth,
			etcd,
		}, grpcTLS, novncTLS), httpReady(w.httpClient, novncHealth)},
		{XVPProxy, concat([]string{
			"--xvpvncproxy_host=" + w.Host,
			"--xvpvncproxy_port=" + strconv.Itoa(w.Ports.XVP),
			"--consoleauth_address=" + consoleauth,
			etcd,
		}, grpcTLS, xvpTLS), xvpReady},
	}
	for _, s := range starts {
		if opts.Skip[s.name] {
			continue
		}
		if err := w.startProc(s.name, append(s.args, opts.Args[s.name]...)); err != nil {
			return nil, err
		}
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := w.waitReady(rctx, s.name, s.ready)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	return w, nil
}

// concat joins flag lists into a new slice.
func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// setUpTLS writes the certificates of Options.TLS and builds the clients
// that trust them.
func (w *World) setUpTLS() error {
	certs, err := writeCerts(filepath.Join(w.Dir, "tls"), w.Host)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	client, err := certs.Client()
	if err != nil {
		return err
	}
	w.Certs, w.caPool = certs, client.RootCAs
	// Only the CA, no client certificate: what a browser or a cloud's API
	// layer has.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: w.caPool, MinVersion: tls.VersionTLS12}
	w.httpClient = &http.Client{Transport: tr}
	api := http.DefaultTransport.(*http.Transport).Clone()
	api.TLSClientConfig = client
	w.restClient = &http.Client{Transport: api}
	return nil
}

// pickPorts fills the ports left 0. All listeners stay open until every
// port is picked, so the kernel cannot hand out one port twice.
func (w *World) pickPorts() error {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, p := range []*int{&w.Ports.Etcd, &w.Ports.ConsoleAuthGRPC, &w.Ports.ConsoleAuthREST, &w.Ports.ComputeAgent, &w.Ports.NoVNC, &w.Ports.XVP} {
		if *p != 0 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(w.Host, "0"))
		if err != nil {
			return err
		}
		held = append(held, l)
		*p = l.Addr().(*net.TCPAddr).Port
	}
	return nil
}

func (w *World) startDemo() error {
	l, err := net.Listen("tcp", net.JoinHostPort(w.Host, "0"))
	if err != nil {
		return err
	}
	w.demoL = l
	w.DemoVNC = l.Addr().String()
	w.Demo = rfb.NewServer(rfb.Options{Width: 800, Height: 600, Name: "vncgate demo VM"})
	go w.Demo.Serve(l)
	return nil
}

// Inventory is what the agent serves: the demo instance, then Options.Instances.
func (w *World) Inventory() []Instance {
	_, port, _ := net.SplitHostPort(w.DemoVNC)
	p, _ := strconv.Atoi(port)
	demo := Instance{UUID: DemoUUID, VNCHost: w.Host, VNCPort: p, State: "running"}
	return append([]Instance{demo}, w.Instances...)
}

func (w *World) writeInventory() (string, error) {
	path := filepath.Join(w.Dir, "inventory.json")
	b, err := json.MarshalIndent(map[string][]Instance{"instances": w.Inventory()}, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, b, 0o600)
}

func (w *World) startProc(name string, args []string) error {
	bin := filepath.Join(w.Bin, name)
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (run make build)", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = w.Dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	// Own process group: a Ctrl-C in the terminal reaches devstack, which
	// stops the services in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	w.procs = append(w.procs, p)
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintf(w.Logs, "%-14s %s\n", name, sc.Text())
		}
	}()
	go func() {
		copied.Wait()
		p.err = cmd.Wait()
		close(p.done)
	}()
	return nil
}

func (w *World) waitReady(ctx context.Context, name string, ready func(context.Context) error) error {
	p := w.procs[len(w.procs)-1]
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v", name, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func httpReady(c *http.Client, u string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", u, resp.Status)
		}
		return nil
	}
}

func (w *World) tcpReady(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// tlsReady completes a TLS handshake with addr, trusting the stack's CA.
func (w *World) tlsReady(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		d := tls.Dialer{Config: &tls.Config{RootCAs: w.caPool, MinVersion: tls.VersionTLS12}}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// agentReady waits until the agent registered and published the demo instance.
func (w *World) agentReady(ctx context.Context) error {
	for _, key := range []string{registry.ComputeKey(ComputeHost), registry.LocationKey(DemoUUID)} {
		resp, err := w.Client.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%s not in etcd yet", key)
		}
	}
	return nil
}

// ConsoleURL asks consoleauth's REST API for a console URL, as a cloud's API
// layer does.
func (w *World) ConsoleURL(ctx context.Context, uuid, consoleType string) (string, error) {
	body := fmt.Sprintf(`{"remote_console": {"protocol": "vnc", "type": %q}}`, consoleType)
	u := w.RESTURL() + "/v2.1/servers/" + url.PathEscape(uuid) + "/remote-consoles"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.restClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("remote-consoles: %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	var out struct {
		RemoteConsole struct {
			URL string `json:"url"`
		} `json:"remote_console"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || out.RemoteConsole.URL == "" {
		return "", fmt.Errorf("remote-consoles: unexpected answer %s", raw)
	}
	return out.RemoteConsole.URL, nil
}

// TokenOf extracts the token from a novnc or xvpvnc console URL.
func TokenOf(consoleURL string) (string, error) {
	u, err := url.Parse(consoleURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	if t := q.Get("token"); t != "" {
		return t, nil
	}
	if p := q.Get("path"); p != "" {
		inner, err := url.ParseQuery(strings.TrimPrefix(p, "?"))
		if err == nil && inner.Get("token") != "" {
			return inner.Get("token"), nil
		}
	}
	return "", fmt.Errorf("no token in %s", consoleURL)
}

// Proc returns the running process of a service, nil if not started.
func (w *World) Proc(name string) *os.Process {
	for _, p := range w.procs {
		if p.name == name {
			return p.cmd.Process
		}
	}
	return nil
}

func (p *proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM", p.name, grace)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return fmt.Errorf("%s: %v", p.name, p.err)
	}
	return nil
}

// Stop ends the services in reverse order, then the demo VNC server and
// etcd. It returns the first service that did not stop cleanly.
func (w *World) Stop() error {
	var first error
	for i := len(w.procs) - 1; i >= 0; i-- {
		if err := w.procs[i].stop(10 * time.Second); err != nil && first == nil {
			first = err
		}
	}
	w.procs = nil
	if w.Demo != nil {
		w.Demo.Close()
	}
	if w.demoL != nil {
		w.demoL.Close()
	}
	if w.Client != nil {
		w.Client.Close()
	}
	if w.Etcd != nil {
		w.Etcd.Stop()
	}
	return first
}
