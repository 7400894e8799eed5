// Package devstack runs the whole of vncgate on one machine: an embedded
// etcd, the demo VNC server, and the four services as separate processes,
// wired together on loopback. `make run` and the end-to-end tests use it;
// production runs each service on its own (see deploy/README.md).
package devstack

import (
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
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
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
	// Dir holds etcd data, the inventory, the services' logs (logs/), their
	// certificates (tls/) and the API keys file (api-keys).
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
	// Logs receives every service's output, each line prefixed by its name
	// and cut at MaxShownLine bytes. Dir/logs/<service>.log keeps it whole.
	Logs io.Writer
	// TLS puts TLS on both proxies' public ports (novnc-proxy with
	// ssl_only) and on consoleauth's REST API, with https base URLs; the
	// REST API then also asks for a client certificate, which RESTClient
	// presents (role api) besides the bearer key. Whatever TLS says, every
	// gRPC link is mutual TLS with a certificate per service naming its role
	// (Identity), and REST callers need the API key. etcd stays plaintext
	// (embedded, on Host).
	TLS bool
	// AllowPlaintext sets [vncgate] allow_plaintext on every service, which
	// they need to listen in plaintext (etcd, and without TLS the REST API
	// and the proxies) on a Host off loopback.
	AllowPlaintext bool
}

// Ports of one stack.
type Ports struct {
	Etcd, ConsoleAuthGRPC, ConsoleAuthREST, ComputeAgent, NoVNC, XVP int
	// The services' admin listeners (/livez, /readyz, /metrics,
	// /debug/pprof/), on loopback: AdminAddr.
	ConsoleAuthAdmin, ComputeAgentAdmin, NoVNCAdmin, XVPAdmin int
}

// DefaultPorts are DESIGN.md's defaults.
func DefaultPorts() Ports {
	return Ports{Etcd: 2379, ConsoleAuthGRPC: 6090, ConsoleAuthREST: 6091, ComputeAgent: 6092, NoVNC: 6080, XVP: 6081,
		ConsoleAuthAdmin: 6190, ComputeAgentAdmin: 6192, NoVNCAdmin: 6180, XVPAdmin: 6181}
}

// World is a running stack.
type World struct {
	Options
	Etcd    *etcdserver.Server
	Client  *clientv3.Client
	Demo    *rfb.Server
	DemoVNC string // the demo VNC server's host:port
	// CA is the stack's certificate authority, made afresh by Start: every
	// service's certificate comes from it, and ClientTLS issues more.
	CA *certs.CA
	// Certs are the PEM files each service presents (key: service name) as
	// gRPC server and mTLS client, and with Options.TLS on its public port
	// (consoleauth: its REST port), in Dir/tls/<service>.
	Certs map[string]tlsconfig.Files
	// APIKey is the bearer key of the cloud's API layer (role api) for
	// consoleauth's REST API; APIKeysFile, consoleauth's api_keys_file,
	// holds only its SHA-256.
	APIKey      string
	APIKeysFile string

	caPool     *x509.CertPool
	httpClient *http.Client
	restClient *http.Client
	procs      []*proc
	demoL      net.Listener
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lineWriter
	done chan struct{}
	err  error
}

// Addr is host:port on the stack's host.
func (w *World) Addr(port int) string { return net.JoinHostPort(w.Host, strconv.Itoa(port)) }

// AdminAddr is host:port of an admin listener: always loopback, whatever
// Host is (plain HTTP, pprof).
func (w *World) AdminAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// RESTURL is consoleauth's REST base, e.g. http://127.0.0.1:6091 (https
// with Options.TLS).
func (w *World) RESTURL() string { return w.scheme() + "://" + w.Addr(w.Ports.ConsoleAuthREST) }

// RESTClient is the HTTP client of the cloud's API layer: it sends the API
// key (Authorization: Bearer, to the REST API only), and with Options.TLS
// it trusts the stack's CA and presents a client certificate of role api.
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

// CAPool trusts the stack's CA.
func (w *World) CAPool() *x509.CertPool { return w.caPool }

// HTTPClient is an HTTP client that trusts the stack's CA and has no
// credentials, as a browser: for the proxies' https endpoints, and for
// calls to the REST API that must be refused.
func (w *World) HTTPClient() *http.Client { return w.httpClient }

// GRPCFlags are the flags that give service's gRPC links (server and
// client) its certificate: for one more process of a service that a test
// starts beside the stack.
func (w *World) GRPCFlags(service string) []string {
	f := w.Certs[service]
	return []string{"--grpc_cert=" + f.Cert, "--grpc_key=" + f.Key, "--grpc_ca=" + f.CA}
}

// LogPath is the file holding everything a service wrote (stdout and
// stderr), whole lines however long.
func (w *World) LogPath(service string) string {
	return filepath.Join(w.Dir, "logs", service+".log")
}

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
	if err := w.setUpCredentials(); err != nil {
		return nil, err
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
	// (consoleauth), each service presenting its own certificate, whose
	// role says what it may call. REST callers need the API key. With
	// Options.TLS: TLS on the REST API and the proxies' public ports
	// (novnc-proxy refuses plain HTTP).
	grpcTLS := w.GRPCFlags
	publicTLS := func(service string) []string {
		f := w.Certs[service]
		return []string{"--cert=" + f.Cert, "--key=" + f.Key}
	}
	var restTLS, novncTLS, xvpTLS, plaintext []string
	novncHealth := "http://" + w.Addr(w.Ports.NoVNC) + "/healthz"
	xvpReady := w.tcpReady(w.Addr(w.Ports.XVP))
	if opts.TLS {
		f := w.Certs[ConsoleAuth]
		restTLS = []string{"--rest_cert=" + f.Cert, "--rest_key=" + f.Key, "--rest_ca=" + f.CA}
		novncTLS = append(publicTLS(NoVNCProxy), "--ssl_only")
		xvpTLS = publicTLS(XVPProxy)
		novncHealth = "https://" + w.Addr(w.Ports.NoVNC) + "/healthz"
		xvpReady = w.tlsReady(w.Addr(w.Ports.XVP))
	}
	if opts.AllowPlaintext {
		plaintext = []string{"--allow_plaintext"}
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
			"--api_keys_file=" + w.APIKeysFile,
			"--admin_listen=" + w.AdminAddr(w.Ports.ConsoleAuthAdmin),
		}, ttl, grpcTLS(ConsoleAuth), restTLS, plaintext), httpReady(w.restClient, w.RESTURL()+"/healthz")},
		{ComputeAgent, concat([]string{
			"--grpc_listen=" + w.Addr(w.Ports.ComputeAgent),
			"--host=" + ComputeHost,
			etcd,
			"--driver=static",
			"--inventory_file=" + inventory,
			"--consoleauth_address=" + consoleauth,
			"--registration_ttl=5",
			"--admin_listen=" + w.AdminAddr(w.Ports.ComputeAgentAdmin),
		}, grpcTLS(ComputeAgent), plaintext), w.agentReady},
		{NoVNCProxy, concat([]string{
			"--novncproxy_host=" + w.Host,
			"--novncproxy_port=" + strconv.Itoa(w.Ports.NoVNC),
			"--novncproxy_base_url=" + w.NoVNCBaseURL(),
			"--consoleauth_address=" + consoleauth,
			etcd,
			"--admin_listen=" + w.AdminAddr(w.Ports.NoVNCAdmin),
			"--shutdown_delay=0", // no load balancer to wait for
		}, grpcTLS(NoVNCProxy), novncTLS, plaintext), httpReady(w.httpClient, novncHealth)},
		{XVPProxy, concat([]string{
			"--xvpvncproxy_host=" + w.Host,
			"--xvpvncproxy_port=" + strconv.Itoa(w.Ports.XVP),
			"--consoleauth_address=" + consoleauth,
			etcd,
			"--admin_listen=" + w.AdminAddr(w.Ports.XVPAdmin),
			"--shutdown_delay=0", // no load balancer to wait for
		}, grpcTLS(XVPProxy), xvpTLS, plaintext), xvpReady},
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

// setUpCredentials makes the stack's CA, every service's certificate and
// the API key, and builds the clients: a browser's (trusts the CA) and the
// API layer's (the key, and a certificate for a TLS REST API).
func (w *World) setUpCredentials() error {
	ca, files, err := writeCerts(filepath.Join(w.Dir, "tls"), w.Host)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	w.CA, w.Certs, w.caPool = ca, files, ca.Pool()
	w.APIKeysFile = filepath.Join(w.Dir, "api-keys")
	if w.APIKey, err = writeAPIKey(w.APIKeysFile); err != nil {
		return fmt.Errorf("api key: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: w.caPool, MinVersion: tls.VersionTLS12}
	w.httpClient = &http.Client{Transport: tr}
	api := http.DefaultTransport.(*http.Transport).Clone()
	if api.TLSClientConfig, err = w.ClientTLS(authn.RoleAPI, APIName); err != nil {
		return err
	}
	w.restClient = &http.Client{Transport: bearer{key: w.APIKey, host: w.Addr(w.Ports.ConsoleAuthREST), next: api}}
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
	for _, p := range []*int{&w.Ports.Etcd, &w.Ports.ConsoleAuthGRPC, &w.Ports.ConsoleAuthREST, &w.Ports.ComputeAgent, &w.Ports.NoVNC, &w.Ports.XVP,
		&w.Ports.ConsoleAuthAdmin, &w.Ports.ComputeAgentAdmin, &w.Ports.NoVNCAdmin, &w.Ports.XVPAdmin} {
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
	if err := os.MkdirAll(filepath.Dir(w.LogPath(name)), 0o700); err != nil {
		return err
	}
	log, err := os.OpenFile(w.LogPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	p := &proc{name: name, out: &lineWriter{prefix: name, out: w.Logs}, done: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Dir = w.Dir
	// One writer for both, so exec copies them through one pipe in order;
	// its copy never stops on a long line (a service must never block on
	// its own log).
	cmd.Stdout = io.MultiWriter(log, p.out)
	cmd.Stderr = cmd.Stdout
	// Own process group: a Ctrl-C in the terminal reaches devstack, which
	// stops the services in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	w.procs = append(w.procs, p)
	go func() {
		p.err = cmd.Wait() // returns once the output is copied
		p.out.flush()
		log.Close()
		close(p.done)
	}()
	return nil
}

// MaxShownLine caps each line a service writes as copied to Options.Logs;
// the service's log file keeps it whole.
const MaxShownLine = 8 << 10

// lineWriter copies a service's output to Logs line by line, each prefixed
// by the service's name and cut at MaxShownLine. Only exec's copying
// goroutine writes to it, then flush runs once after it ended.
type lineWriter struct {
	prefix string
	out    io.Writer
	line   []byte // the current line, up to MaxShownLine bytes
	cut    int    // bytes of the current line beyond those
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		end := bytes.IndexByte(p, '\n')
		chunk := p
		if end >= 0 {
			chunk = p[:end]
		}
		keep := min(len(chunk), MaxShownLine-len(l.line))
		l.line = append(l.line, chunk[:keep]...)
		l.cut += len(chunk) - keep
		if end < 0 {
			break
		}
		l.flush()
		p = p[end+1:]
	}
	return n, nil
}

// flush writes the current line, if any.
func (l *lineWriter) flush() {
	if len(l.line) == 0 && l.cut == 0 {
		return
	}
	if l.cut > 0 {
		fmt.Fprintf(l.out, "%-14s %s … [%d more bytes]\n", l.prefix, l.line, l.cut)
	} else {
		fmt.Fprintf(l.out, "%-14s %s\n", l.prefix, l.line)
	}
	l.line, l.cut = l.line[:0], 0
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
	for _, key := range []string{registry.ComputeKey(ComputeHost), registry.ComputeInstanceKey(ComputeHost, DemoUUID)} {
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
