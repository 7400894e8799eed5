package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/haproxy"
)

// Process is one process of a service: the agent, or a replica of
// consoleauth or of a proxy. Tests signal, stop or kill it and start it
// again with the same flags, ports, certificate and log file (appended).
// Its methods are safe for concurrent use.
type Process struct {
	// Service is the binary: ConsoleAuth, ComputeAgent, NoVNCProxy or
	// XVPProxy.
	Service string
	// Name is the service's name with one replica, else the service's
	// name and the replica's number from 1 ("novnc-proxy-2"): the name of
	// its log file (LogPath), certificate folder and HAProxy server.
	Name string
	// Ports are the replica's own: its service's fields (and the
	// admin port) are the ones it listens on.
	Ports Ports

	w     *World
	args  []string
	ready func(context.Context) error

	mu  sync.Mutex
	run *proc // the latest run; nil before the first
}

// Processes are the processes of a service in replica order (all of them
// for service ""), as started; left out services have none.
func (w *World) Processes(service string) []*Process {
	var out []*Process
	for _, p := range w.processes {
		if service == "" || p.Service == service {
			out = append(out, p)
		}
	}
	return out
}

// Process is the process named name (Process.Name), nil if none.
func (w *World) Process(name string) *Process {
	for _, p := range w.processes {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// newProcess adds a process of service to the world, not started yet.
func (w *World) newProcess(service, name string, ports Ports) *Process {
	p := &Process{Service: service, Name: name, Ports: ports, w: w}
	w.processes = append(w.processes, p)
	return p
}

// replicas are the processes of service planned so far.
func (w *World) replicas(service string) []*Process { return w.Processes(service) }

// replicated are the services that run Options.Replicas processes.
var replicated = []string{ConsoleAuth, NoVNCProxy, XVPProxy}

// pickReplicaPorts plans the replicas of consoleauth and the proxies with
// their ports: the first replica has Ports' (but, behind HAProxy, free
// public ports: HAProxy has Ports'), every other one free ports.
func (w *World) pickReplicaPorts() error {
	var free []*int
	for _, service := range replicated {
		for i := range w.Replicas {
			name := service
			if w.Replicas > 1 {
				name = fmt.Sprintf("%s-%d", service, i+1)
			}
			var ports Ports
			if i == 0 {
				ports = w.Ports
				if w.LB {
					ports.ConsoleAuthREST, ports.NoVNC, ports.XVP = 0, 0, 0
				}
			}
			p := w.newProcess(service, name, ports)
			switch service {
			case ConsoleAuth:
				free = append(free, &p.Ports.ConsoleAuthGRPC, &p.Ports.ConsoleAuthREST, &p.Ports.ConsoleAuthAdmin)
			case NoVNCProxy:
				free = append(free, &p.Ports.NoVNC, &p.Ports.NoVNCAdmin)
			case XVPProxy:
				free = append(free, &p.Ports.XVP, &p.Ports.XVPAdmin)
			}
		}
	}
	return w.pickFree(free)
}

// certNames maps the name of every process that presents a certificate to
// its service: each replica has its own.
func (w *World) certNames() map[string]string {
	names := map[string]string{ComputeAgent: ComputeAgent}
	for _, p := range w.processes {
		names[p.Name] = p.Service
	}
	return names
}

// restClientFor is the API layer's client (see RESTClient) for the REST
// API at host:port: HAProxy's or a replica's.
func (w *World) restClientFor(hostPort string) *http.Client {
	next := w.restTransport
	if next == nil {
		next = http.DefaultTransport
	}
	return &http.Client{Transport: bearer{key: w.APIKey, host: hostPort, next: next}}
}

// RESTClientOf is RESTClient for one consoleauth replica's REST API (its
// base URL is ReplicaRESTURL), past HAProxy.
func (w *World) RESTClientOf(p *Process) *http.Client {
	return w.restClientFor(w.Addr(p.Ports.ConsoleAuthREST))
}

// ReplicaRESTURL is the REST base URL of one consoleauth replica.
func (w *World) ReplicaRESTURL(p *Process) string {
	return w.scheme() + "://" + w.Addr(p.Ports.ConsoleAuthREST)
}

// Unavailable is the body of HAProxy's own 503, when no replica of a
// service is up: the words consoleauth and the proxies use for the same
// condition.
const Unavailable = "the console service is temporarily unavailable: no replica is ready"

// startLB runs HAProxy on Ports' REST, NoVNC and XVP addresses in front of
// the replicas (Options.LB).
func (w *World) startLB() error {
	servers := func(service string, port func(Ports) int, admin func(Ports) int) []haproxy.Server {
		var out []haproxy.Server
		for _, p := range w.Processes(service) {
			out = append(out, haproxy.Server{Name: p.Name, Addr: w.Addr(port(p.Ports)), CheckAddr: w.AdminAddr(admin(p.Ports))})
		}
		return out
	}
	var fronts []haproxy.Frontend
	if s := servers(ConsoleAuth, func(p Ports) int { return p.ConsoleAuthREST }, func(p Ports) int { return p.ConsoleAuthAdmin }); len(s) > 0 {
		fronts = append(fronts, haproxy.Frontend{Name: "rest", Bind: w.Addr(w.Ports.ConsoleAuthREST), HTTP: !w.TLS,
			CheckPath: "/readyz", Unavailable: Unavailable, FailOpen: true, Servers: s})
	}
	if s := servers(NoVNCProxy, func(p Ports) int { return p.NoVNC }, func(p Ports) int { return p.NoVNCAdmin }); len(s) > 0 {
		fronts = append(fronts, haproxy.Frontend{Name: "novnc", Bind: w.Addr(w.Ports.NoVNC), HTTP: !w.TLS,
			CheckPath: "/readyz", Unavailable: Unavailable, FailOpen: true, Servers: s})
	}
	if s := servers(XVPProxy, func(p Ports) int { return p.XVP }, func(p Ports) int { return p.XVPAdmin }); len(s) > 0 {
		fronts = append(fronts, haproxy.Frontend{Name: "xvp", Bind: w.Addr(w.Ports.XVP), SendProxy: "send-proxy-v2",
			CheckPath: "/readyz", FailOpen: true, Servers: s})
	}
	dir := filepath.Join(w.Dir, "haproxy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	log, err := os.OpenFile(w.LogPath("haproxy"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	// Its log (servers going down and up, each request) goes where the
	// services' does.
	w.HAProxy, err = haproxy.Run(haproxy.Config{Frontends: fronts, Dir: dir,
		Log: io.MultiWriter(log, &lineWriter{prefix: "haproxy", out: w.Logs})})
	if err != nil {
		log.Close()
		if strings.Contains(err.Error(), "cannot bind socket") {
			return fmt.Errorf("%w: %v", errPortTaken, err)
		}
		return err
	}
	w.haproxyLog = log
	// Every server is up only after its first checks: wait for them, so
	// the world is whole when Start returns.
	for _, f := range fronts {
		for _, s := range f.Servers {
			if err := w.WaitLB(context.Background(), f.Name, s.Name, true); err != nil {
				return err
			}
		}
	}
	return nil
}

// LBServer is HAProxy's name of a process's server: frontend/server, as
// its log says "Server novnc/novnc-proxy-1 is UP".
func LBServer(p *Process) string {
	switch p.Service {
	case ConsoleAuth:
		return "rest/" + p.Name
	case NoVNCProxy:
		return "novnc/" + p.Name
	case XVPProxy:
		return "xvp/" + p.Name
	}
	return ""
}

// WaitLB returns once HAProxy has server (of frontend) up, or down, as its
// runtime state says, within 30 s (a bound on a hang).
func (w *World) WaitLB(ctx context.Context, frontend, server string, up bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		state, err := w.HAProxy.ServerState(frontend, server)
		if err == nil && (up && state == "UP" || !up && (strings.HasPrefix(state, "DOWN") || state == "MAINT")) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("haproxy server %s/%s up=%v: not within 30s (last %q, %v)", frontend, server, up, state, err)
		case <-w.HAProxy.Exited():
			return fmt.Errorf("haproxy exited while waiting for server %s/%s up=%v:\n%s", frontend, server, up, w.HAProxy.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// AddAgent starts one more compute agent, registering as host, with
// devstack's flags for an agent (its own ports and certificate, etcd,
// every consoleauth replica) and then driver's (e.g. "--driver=libvirt"),
// and returns it once its registration is in etcd. Its name is
// "compute-agent-" + host.
func (w *World) AddAgent(ctx context.Context, host string, driver ...string) (*Process, error) {
	name := ComputeAgent + "-" + host
	if w.Process(name) != nil {
		return nil, fmt.Errorf("%s runs already", name)
	}
	var ports Ports
	if err := w.pickFree([]*int{&ports.ComputeAgent, &ports.ComputeAgentAdmin}); err != nil {
		return nil, err
	}
	f, err := w.CA.WriteIdentityFiles(filepath.Join(w.Dir, "tls", name), replicaIdentity(ComputeAgent, name), "localhost", "127.0.0.1", "::1", w.Host)
	if err != nil {
		return nil, fmt.Errorf("%s certificate: %w", name, err)
	}
	w.Certs[name] = tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
	p := w.newProcess(ComputeAgent, name, ports)
	p.args = w.agentArgs(p, host, driver...)
	p.ready = func(ctx context.Context) error {
		resp, err := w.Client.Get(ctx, registry.ComputeKey(host))
		if err == nil && len(resp.Kvs) == 0 {
			err = fmt.Errorf("%s not registered yet", host)
		}
		return err
	}
	return p, p.start(ctx)
}

// EtcdLeader is the index in EtcdCluster.Members of the etcd leader; an
// error without a cluster, without a quorum, or during an election.
func (w *World) EtcdLeader(ctx context.Context) (int, error) {
	if w.EtcdCluster == nil {
		return -1, errors.New("etcd leader: one embedded member, no cluster (Options.EtcdMembers)")
	}
	return w.EtcdCluster.Leader(ctx)
}

// start runs the process and returns once it is ready (within a minute:
// a bound on a hang).
func (p *Process) start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run != nil && !p.run.exited() {
		return fmt.Errorf("%s runs already", p.Name)
	}
	run, err := p.w.startProc(p.Service, p.Name, p.args)
	if err != nil {
		return err
	}
	p.run = run
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = waitReady(rctx, run, p.ready)
	if err != nil && run.exited() && strings.Contains(tail(p.w.LogPath(p.Name)), "address already in use") {
		return fmt.Errorf("%w: %v", errPortTaken, err)
	}
	return err
}

// tail is the end of a log file: the last run's lines.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	return string(b[max(0, len(b)-4096):])
}

// Start runs the process again, after it stopped or was killed, with the
// same flags, and returns once it is ready.
func (p *Process) Start(ctx context.Context) error { return p.start(ctx) }

func (p *Process) current() *proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.run
}

// Running reports whether the process runs.
func (p *Process) Running() bool {
	r := p.current()
	return r != nil && !r.exited()
}

// Ready probes the process's readiness once (what Start waited for).
func (p *Process) Ready(ctx context.Context) error { return p.ready(ctx) }

// Signal sends sig to the running process.
func (p *Process) Signal(sig os.Signal) error {
	r := p.current()
	if r == nil {
		return fmt.Errorf("%s never started", p.Name)
	}
	return r.cmd.Process.Signal(sig)
}

// Exited is closed once the current run has exited.
func (p *Process) Exited() <-chan struct{} {
	r := p.current()
	if r == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return r.done
}

// ExitErr is how the last run ended (nil: status 0), once Exited is closed.
func (p *Process) ExitErr() error {
	r := p.current()
	if r == nil {
		return nil
	}
	<-r.done
	return r.err
}

// Kill ends the process as a crash would (SIGKILL) and returns once it has
// exited.
func (p *Process) Kill() {
	r := p.current()
	if r == nil || r.exited() {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills it;
// it returns an error for an exit that was not clean.
func (p *Process) Stop(grace time.Duration) error {
	r := p.current()
	if r == nil {
		return nil
	}
	return r.stop(grace)
}

func (r *proc) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// pickFree fills the ports given (those left 0) with free ones. It picks
// them below the kernel's ephemeral range: a service binds its port only
// when it starts, seconds later, and a port from that range (what a listen
// on port 0 gets) may meanwhile become the source port of any outgoing
// connection on the machine, or another test's listener. All listeners
// stay open until every port is picked, so no port is picked twice.
func (w *World) pickFree(ports []*int) error {
	lo, hi := belowEphemeral()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, p := range ports {
		if *p != 0 {
			continue
		}
		var last error
		for range 200 {
			port := lo + rand.IntN(hi-lo)
			l, err := net.Listen("tcp", net.JoinHostPort(w.Host, strconv.Itoa(port)))
			if err != nil {
				last = err
				continue
			}
			held = append(held, l)
			*p = port
			break
		}
		if *p == 0 {
			return fmt.Errorf("no free port in [%d, %d): %w", lo, hi, last)
		}
	}
	return nil
}

// belowEphemeral is the range of ports pickFree picks from: the 10,000
// below the kernel's ephemeral ports (ip_local_port_range), not below 1024.
func belowEphemeral() (lo, hi int) {
	hi = 32768 // Linux's default start
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2048 {
				hi = n
			}
		}
	}
	return max(1024, hi-10000), hi
}
