// Package devstack runs the whole of vncgate on one machine: an embedded
// etcd, the demo VNC server, and the four services as separate processes,
// wired together on loopback. `make run` and the end-to-end tests use it;
// production runs each service on its own (see deploy/README.md).
//
// It also runs the world production runs (Options.EtcdMembers, Replicas,
// LB): a cluster of etcd members each in a process of its own, several
// replicas of consoleauth and of both proxies, each with its own ports,
// certificate and log file, and HAProxy in front of the REST API and the
// proxies, checking each replica's admin /readyz. Tests stop, kill, signal
// and restart any replica (World.Processes) or etcd member (EtcdCluster),
// and find the etcd leader (EtcdLeader); the fault suite (deploy/chaos)
// does.
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
	"slices"
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
	testetcd "github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/etcdserver"
	"github.com/vncgate/vncgate/testkit/haproxy"
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
	// LogFilesOnly has each service write Dir/logs/<service>.log itself,
	// copying nothing to Logs: a benchmark's process, which shares the
	// CPUs with what it measures, then spends none on the services' logs.
	LogFilesOnly bool
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
	// EtcdMembers is the etcd cluster's size: 0 or 1 runs one embedded
	// member inside this process (Etcd); more run that many members, each
	// a child process of its own on loopback (EtcdCluster, package
	// testkit/etcd), which tests can stop, kill and start.
	EtcdMembers int
	// Replicas is how many processes of consoleauth, novnc-proxy and
	// xvp-proxy run (0: one); each has its own ports, certificate and log
	// file, and the proxies and the agent are given every consoleauth
	// replica's gRPC address. Replicas beyond the first listen on free
	// ports.
	Replicas int
	// LB runs HAProxy (Debian's haproxy) on Ports' REST, NoVNC and XVP
	// addresses in front of the replicas, which then all listen on free
	// ports: HTTP mode for the REST API and novnc-proxy (TCP without TLS
	// passthrough with Options.TLS), TCP with a PROXY v2 header for
	// xvp-proxy, every server checked on its admin /readyz. The base URLs
	// and RESTURL name HAProxy.
	LB bool
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
	// Etcd is the embedded etcd of a one-member stack (nil with
	// EtcdCluster).
	Etcd *etcdserver.Server
	// EtcdCluster is the cluster of Options.EtcdMembers > 1, nil otherwise.
	EtcdCluster *testetcd.Cluster
	// EtcdEndpoints are every etcd member's client address, as the
	// services are given them.
	EtcdEndpoints []string
	// HAProxy is the load balancer of Options.LB, nil otherwise.
	HAProxy *haproxy.HAProxy
	// Client is a client of every etcd member.
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
	processes  []*Process // in start order
	// restTransport is the API layer's transport, without the key.
	restTransport http.RoundTripper
	haproxyLog    *os.File
	attempt       int // of Start
	demoL         net.Listener
}

// proc is one run of a Process.
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
func (w *World) LogPath(service string) string { return LogPath(w.Dir, service) }

// LogPath is a service's log file in a stack whose Options.Dir is dir,
// known before the stack starts.
func LogPath(dir, service string) string { return filepath.Join(dir, "logs", service+".log") }

// Start runs a stack and returns when every service is ready.
func Start(ctx context.Context, opts Options) (*World, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Logs == nil {
		opts.Logs = io.Discard
	}
	var err error
	if opts.Bin, err = filepath.Abs(opts.Bin); err != nil {
		return nil, err
	}
	// A port picked free may be taken by another process before the
	// service binds it, seconds later: then start again on other ports.
	for attempt := 1; ; attempt++ {
		w, err := start(ctx, opts, attempt)
		if err == nil || !errors.Is(err, errPortTaken) || attempt == startAttempts {
			return w, err
		}
		fmt.Fprintf(opts.Logs, "devstack: %v; starting again on other ports\n", err)
	}
}

// startAttempts bounds Start's attempts.
const startAttempts = 3

// errPortTaken is a process's exit because its port was taken.
var errPortTaken = errors.New("a port picked free was taken")

// start is one attempt of Start, with etcd's data in a folder of its own.
func start(ctx context.Context, opts Options, attempt int) (_ *World, err error) {
	w := &World{Options: opts, httpClient: http.DefaultClient, restClient: http.DefaultClient, attempt: attempt}
	defer func() {
		if err != nil {
			w.Stop()
		}
	}()
	if w.Replicas < 1 {
		w.Replicas = 1
	}
	if err := w.pickPorts(); err != nil {
		return nil, err
	}
	if err := w.pickReplicaPorts(); err != nil {
		return nil, err
	}
	if err := w.setUpCredentials(); err != nil {
		return nil, err
	}
	if err := w.startEtcd(); err != nil {
		return nil, err
	}
	if err := w.startDemo(); err != nil {
		return nil, err
	}
	inventory, err := w.writeInventory()
	if err != nil {
		return nil, err
	}
	w.plan(inventory)
	for _, p := range w.processes {
		if err := p.start(ctx); err != nil {
			return nil, err
		}
	}
	if opts.LB {
		if err := w.startLB(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// startEtcd runs the embedded member, or the cluster of Options.EtcdMembers,
// and connects Client to it.
func (w *World) startEtcd() (err error) {
	if w.EtcdMembers > 1 {
		if w.EtcdCluster, err = testetcd.StartClusterIn(w.etcdDir(), w.EtcdMembers); err != nil {
			return fmt.Errorf("etcd cluster: %w", err)
		}
		w.EtcdEndpoints = w.EtcdCluster.Endpoints()
	} else {
		if w.Etcd, err = etcdserver.Start(w.etcdDir(), w.Addr(w.Ports.Etcd), "127.0.0.1:0"); err != nil {
			return err
		}
		w.EtcdEndpoints = []string{w.Etcd.Endpoint}
	}
	w.Client, err = etcdclient.New(w.EtcdEndpoints, tlsconfig.Files{})
	return err
}

// etcdDir is etcd's data folder: Dir/etcd, or Dir/etcd-N on Start's
// attempt N, whose members have other addresses.
func (w *World) etcdDir() string {
	if w.attempt > 1 {
		return filepath.Join(w.Dir, fmt.Sprintf("etcd-%d", w.attempt))
	}
	return filepath.Join(w.Dir, "etcd")
}

// plan makes a Process of every service replica, in start order:
// consoleauth, the agent, novnc-proxy, xvp-proxy. It is the one place that
// says how devstack runs each service.
func (w *World) plan(inventory string) {
	opts := w.Options
	etcd := "--etcd_endpoints=" + strings.Join(w.EtcdEndpoints, ",")
	cas := w.replicas(ConsoleAuth)
	var caAddrs []string
	for _, r := range cas {
		caAddrs = append(caAddrs, w.Addr(r.Ports.ConsoleAuthGRPC))
	}
	consoleauth := strings.Join(caAddrs, ",")
	ttl := []string{}
	if opts.TokenTTL > 0 {
		ttl = append(ttl, fmt.Sprintf("--token_ttl=%d", int(opts.TokenTTL.Seconds())))
	}
	// mTLS on every gRPC link: consoleauth's and the agent's servers, and
	// every client of consoleauth (agent, proxies) and of the agent
	// (consoleauth), each process presenting its own certificate, whose
	// role says what it may call. REST callers need the API key. With
	// Options.TLS: TLS on the REST API and the proxies' public ports
	// (novnc-proxy refuses plain HTTP).
	grpcTLS := w.GRPCFlags
	publicTLS := func(name string) []string {
		f := w.Certs[name]
		return []string{"--cert=" + f.Cert, "--key=" + f.Key}
	}
	var plaintext, behindLB []string
	if opts.AllowPlaintext {
		plaintext = []string{"--allow_plaintext"}
	}
	shutdownDelay := "--shutdown_delay=0" // no load balancer to wait for
	if opts.LB {
		// HAProxy connects from the stack's host; its checks every 200 ms
		// (down after 2) take a draining replica out well within 1 s.
		behindLB = []string{"--trusted_proxies=" + strings.Join(uniq("127.0.0.1", w.Host), ",")}
		shutdownDelay = "--shutdown_delay=1"
	}
	for _, r := range cas {
		var restTLS []string
		if opts.TLS {
			f := w.Certs[r.Name]
			restTLS = []string{"--rest_cert=" + f.Cert, "--rest_key=" + f.Key, "--rest_ca=" + f.CA}
		}
		r.args = concat([]string{
			"--grpc_listen=" + w.Addr(r.Ports.ConsoleAuthGRPC),
			"--rest_listen=" + w.Addr(r.Ports.ConsoleAuthREST),
			etcd,
			"--novncproxy_base_url=" + w.NoVNCBaseURL(),
			"--xvpvncproxy_base_url=" + w.XVPBaseURL(),
			"--api_keys_file=" + w.APIKeysFile,
			"--admin_listen=" + w.AdminAddr(r.Ports.ConsoleAuthAdmin),
		}, ttl, grpcTLS(r.Name), restTLS, plaintext)
		r.ready = httpReady(w.restClientFor(w.Addr(r.Ports.ConsoleAuthREST)), w.scheme()+"://"+w.Addr(r.Ports.ConsoleAuthREST)+"/healthz")
	}
	agent := w.newProcess(ComputeAgent, ComputeAgent, w.Ports)
	agent.args = w.agentArgs(agent, ComputeHost, "--driver=static", "--inventory_file="+inventory)
	agent.ready = w.agentReady
	for _, r := range w.replicas(NoVNCProxy) {
		var novncTLS []string
		health := "http://" + w.Addr(r.Ports.NoVNC) + "/healthz"
		if opts.TLS {
			novncTLS = append(publicTLS(r.Name), "--ssl_only")
			health = "https://" + w.Addr(r.Ports.NoVNC) + "/healthz"
		}
		r.args = concat([]string{
			"--novncproxy_host=" + w.Host,
			"--novncproxy_port=" + strconv.Itoa(r.Ports.NoVNC),
			"--novncproxy_base_url=" + w.NoVNCBaseURL(),
			"--consoleauth_address=" + consoleauth,
			etcd,
			"--admin_listen=" + w.AdminAddr(r.Ports.NoVNCAdmin),
			"--proxy_name=" + r.Name, // its live sessions' and drains' name
			shutdownDelay,
		}, grpcTLS(r.Name), novncTLS, plaintext, behindLB)
		r.ready = httpReady(w.httpClient, health)
	}
	for _, r := range w.replicas(XVPProxy) {
		var xvpTLS []string
		r.ready = w.tcpReady(w.Addr(r.Ports.XVP))
		if opts.TLS {
			xvpTLS = publicTLS(r.Name)
			r.ready = w.tlsReady(w.Addr(r.Ports.XVP))
		}
		if opts.LB {
			// Behind HAProxy every connection starts with a PROXY
			// header, which a plain connect does not send: ready is
			// the admin listener's /readyz.
			r.ready = httpReady(http.DefaultClient, "http://"+w.AdminAddr(r.Ports.XVPAdmin)+"/readyz")
		}
		r.args = concat([]string{
			"--xvpvncproxy_host=" + w.Host,
			"--xvpvncproxy_port=" + strconv.Itoa(r.Ports.XVP),
			"--consoleauth_address=" + consoleauth,
			etcd,
			"--admin_listen=" + w.AdminAddr(r.Ports.XVPAdmin),
			"--proxy_name=" + r.Name,
			shutdownDelay,
		}, grpcTLS(r.Name), xvpTLS, plaintext, behindLB)
	}
	// Start order: consoleauth, agent, novnc-proxy, xvp-proxy; left out
	// services go.
	var order []*Process
	for _, name := range []string{ConsoleAuth, ComputeAgent, NoVNCProxy, XVPProxy} {
		if opts.Skip[name] {
			continue
		}
		for _, p := range w.processes {
			if p.Service == name {
				p.args = append(p.args, opts.Args[name]...)
				order = append(order, p)
			}
		}
	}
	w.processes = order
}

// agentArgs are a compute agent's flags: devstack's for host (its ports,
// etcd, every consoleauth replica, its certificate), then driver's.
func (w *World) agentArgs(p *Process, host string, driver ...string) []string {
	var caAddrs []string
	for _, r := range w.replicas(ConsoleAuth) {
		caAddrs = append(caAddrs, w.Addr(r.Ports.ConsoleAuthGRPC))
	}
	var plaintext []string
	if w.AllowPlaintext {
		plaintext = []string{"--allow_plaintext"}
	}
	return concat([]string{
		"--grpc_listen=" + w.Addr(p.Ports.ComputeAgent),
		"--host=" + host,
		"--etcd_endpoints=" + strings.Join(w.EtcdEndpoints, ","),
		"--consoleauth_address=" + strings.Join(caAddrs, ","),
		"--registration_ttl=5",
		"--admin_listen=" + w.AdminAddr(p.Ports.ComputeAgentAdmin),
	}, driver, w.GRPCFlags(p.Name), plaintext)
}

// uniq is its arguments without repeats, in order.
func uniq(s ...string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
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
	ca, files, err := writeCerts(filepath.Join(w.Dir, "tls"), w.Host, w.certNames())
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
	w.restTransport = api
	w.restClient = w.restClientFor(w.Addr(w.Ports.ConsoleAuthREST))
	return nil
}

// pickPorts fills the ports left 0 (see pickFree).
func (w *World) pickPorts() error {
	return w.pickFree([]*int{&w.Ports.Etcd, &w.Ports.ConsoleAuthGRPC, &w.Ports.ConsoleAuthREST, &w.Ports.ComputeAgent, &w.Ports.NoVNC, &w.Ports.XVP,
		&w.Ports.ConsoleAuthAdmin, &w.Ports.ComputeAgentAdmin, &w.Ports.NoVNCAdmin, &w.Ports.XVPAdmin})
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

// startProc runs one process of the binary of service, named name in its
// log file and output.
func (w *World) startProc(service, name string, args []string) (*proc, error) {
	bin := filepath.Join(w.Bin, service)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s: %w (run make build)", service, err)
	}
	if err := os.MkdirAll(filepath.Dir(w.LogPath(name)), 0o700); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(w.LogPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, out: &lineWriter{prefix: name, out: w.Logs}, done: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Dir = w.Dir
	// One writer for both, so exec copies them through one pipe in order;
	// its copy never stops on a long line (a service must never block on
	// its own log).
	cmd.Stdout = io.MultiWriter(log, p.out)
	if w.LogFilesOnly {
		cmd.Stdout = log // an *os.File: the service's own descriptor, no pipe
	}
	cmd.Stderr = cmd.Stdout
	// Own process group: a Ctrl-C in the terminal reaches devstack, which
	// stops the services in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait() // returns once the output is copied
		p.out.flush()
		log.Close()
		close(p.done)
	}()
	return p, nil
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

func waitReady(ctx context.Context, p *proc, ready func(context.Context) error) error {
	name := p.name
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

// Proc returns the running process of a service (its first replica) or of
// a replica by name, nil if not started.
func (w *World) Proc(name string) *os.Process {
	for _, p := range w.processes {
		if p.Service == name || p.Name == name {
			if c := p.current(); c != nil {
				return c.cmd.Process
			}
			return nil
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
	if w.HAProxy != nil {
		w.HAProxy.Close()
		w.haproxyLog.Close()
	}
	for i := len(w.processes) - 1; i >= 0; i-- {
		if err := w.processes[i].Stop(10 * time.Second); err != nil && first == nil {
			first = err
		}
	}
	w.processes = nil
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
	if w.EtcdCluster != nil {
		w.EtcdCluster.Close()
	}
	return first
}
