package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vncgate/vncgate/pkg/admin"
	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/libvirt"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/qmp"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/static"
	"github.com/vncgate/vncgate/services/compute-agent/internal/grpcapi"
	"github.com/vncgate/vncgate/services/compute-agent/internal/registration"
	"github.com/vncgate/vncgate/services/compute-agent/internal/revoker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// drainTimeout bounds how long in-flight RPCs may finish on shutdown.
const drainTimeout = 5 * time.Second

// env is what run gets from its caller besides the settings.
type env struct {
	log *slog.Logger
	// reload delivers SIGHUP: re-read the driver's configuration.
	reload <-chan os.Signal
	// ready, when set, is called with the gRPC address once serving.
	ready func(grpcAddr string)
	// admin, when set, is called with the admin listener's address (nil
	// when admin_listen is empty) once serving.
	admin func(net.Addr)
}

// run serves the agent until ctx ends or the gRPC server fails. Shutdown:
// health goes NOT_SERVING and the registration lease is revoked first, then
// in-flight RPCs get drainTimeout to finish.
func run(ctx context.Context, cfg Config, env env) error {
	log := env.log
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := cfg.checkPlaintext(); err != nil {
		return err
	}
	cfg.GRPCTLS.Log, cfg.EtcdTLS.Log = log, log
	if why := cfg.unreachableVNC(); why != "" {
		log.Warn(why)
	}
	drv, background, err := openDriver(cfg, log)
	if err != nil {
		return err
	}
	etcd, err := etcdclient.New(cfg.EtcdEndpoints, cfg.EtcdTLS)
	if err != nil {
		return err
	}
	defer etcd.Close()
	tracing, err := grpcserver.StartTracing(ctx, cfg.Tracing, "compute-agent")
	if err != nil {
		return err
	}
	defer shutdownTracing(tracing, log) // after the server stopped: its last spans go out
	reg := newRegistry()
	kit := grpcserver.Options{Log: log, Metrics: grpcserver.NewMetrics(reg), Tracing: tracing}
	consoleauth, err := dialConsoleAuth(cfg, log, grpcserver.DialOptions(kit)...)
	if err != nil {
		return err
	}
	defer consoleauth.Close()
	srv, healthSrv, err := newServer(cfg, drv, log, kit)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}
	defer l.Close()
	advertise := cfg.AdvertiseAddress
	if advertise == "" {
		advertise = advertiseFrom(l.Addr(), cfg.MyIP)
	}
	agent, err := registration.New(registration.Config{
		Client:  etcd,
		Host:    cfg.Host,
		Address: advertise,
		TTL:     cfg.RegistrationTTL,
		Driver:  drv,
		Revoker: revoker.New(consoleauthv1.NewConsoleAuthServiceClient(consoleauth), log, reg),
		Metrics: registration.NewMetrics(reg),
		Logger:  log,
		// Claims publish what GetConsole answers (the proxies' address).
		Console: grpcapi.New(drv, cfg.ProxyClientAddress, log).Console,
	})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if background != nil {
		wg.Go(func() { background(ctx) })
	}
	if r, ok := drv.(interface{ Reload() error }); ok && env.reload != nil {
		wg.Go(func() { reloadOnSignal(ctx, env.reload, r, log) })
	}
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		_ = agent.Run(ctx)
	}()
	adminL, err := admin.Listen(cfg.AdminListen, cfg.AllowPlaintext || cfg.AdminAllowRemote)
	if err != nil {
		return err
	}
	adminSrv := admin.Serve(adminL, admin.Options{Metrics: agentMetrics(reg, agent, drv), Ready: agentReadiness(agent, drv), Log: log})
	defer adminSrv.Stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	log.Info("compute agent serving", "addr", l.Addr().String(), "advertise", advertise, "host", cfg.Host,
		"driver", cfg.Driver, "endpoints", cfg.EtcdEndpoints, "tls", cfg.GRPCTLS.Enabled())
	if env.ready != nil {
		env.ready(l.Addr().String())
	}
	if env.admin != nil {
		env.admin(adminSrv.Addr())
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		runErr = fmt.Errorf("grpc server: %w", err)
	}
	log.Info("compute agent stopping")
	healthSrv.Shutdown()
	cancel()
	<-agentDone // the lease is revoked: consoleauth stops sending work here
	gracefulStop(srv, drainTimeout)
	return runErr
}

// driverTimeout bounds the driver's answer to a readiness probe.
const driverTimeout = 2 * time.Second

// driverUp asks the driver for its instances: an answer in time is up.
func driverUp(drv driver.Driver) error {
	ctx, cancel := context.WithTimeout(context.Background(), driverTimeout)
	defer cancel()
	if _, err := drv.Instances(ctx); err != nil {
		return fmt.Errorf("the driver cannot list instances: %w", err)
	}
	return nil
}

// agentReadiness is /readyz: registered in etcd (consoleauth can find the
// agent) and the driver answering.
func agentReadiness(agent *registration.Agent, drv driver.Driver) []admin.Check {
	return []admin.Check{
		{Name: "registration", Check: func() error {
			if !agent.Registered() {
				return errors.New("not registered in etcd")
			}
			return nil
		}},
		{Name: "driver", Check: func() error { return driverUp(drv) }},
	}
}

// newRegistry is the agent's registry: the Go runtime and the process; the
// gRPC server's, the revoker's and the registration's metrics join it.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// agentMetrics adds to reg what /metrics reads at each scrape: whether the
// agent is registered, and the driver's answer (up, and how many instances).
func agentMetrics(reg *prometheus.Registry, agent *registration.Agent, drv driver.Driver) *prometheus.Registry {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vncgate_compute_agent_registered",
		Help: "1 while the agent's compute key is in etcd on a live lease"}, func() float64 { return bool01(agent.Registered()) }),
		driverCollector{drv})
	return reg
}

var (
	driverUpDesc = prometheus.NewDesc("vncgate_compute_agent_driver_up",
		"1 when the driver listed its instances at the last scrape", nil, nil)
	instancesDesc = prometheus.NewDesc("vncgate_compute_agent_instances",
		"Instances the driver listed at the last scrape (absent while it does not answer)", nil, nil)
)

// driverCollector asks the driver once per scrape.
type driverCollector struct{ drv driver.Driver }

func (c driverCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- driverUpDesc
	ch <- instancesDesc
}

func (c driverCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), driverTimeout)
	defer cancel()
	ids, err := c.drv.Instances(ctx)
	ch <- prometheus.MustNewConstMetric(driverUpDesc, prometheus.GaugeValue, bool01(err == nil))
	if err == nil {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(len(ids)))
	}
}

// shutdownTracing exports the spans still queued, waiting a few seconds at
// most for a collector that does not answer.
func shutdownTracing(t *grpcserver.Tracing, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn("traces not exported at shutdown", "error", err)
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// gracefulStop lets in-flight RPCs finish for up to timeout, then cuts them.
func gracefulStop(srv *grpc.Server, timeout time.Duration) {
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(timeout):
		srv.Stop()
		<-stopped
	}
}

// dialConsoleAuth connects to consoleauth's replicas, to revoke tokens
// (package grpcclient: round-robin, health-checked, a revocation retried
// on another replica); mTLS with the grpc_* files when given: the agent's
// certificate (role compute, CN its host) is what lets consoleauth accept
// its revocations, for its own host's instances only.
func dialConsoleAuth(cfg Config, log *slog.Logger, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds, err := cfg.GRPCTLS.ClientCredentials()
	if err != nil {
		return nil, fmt.Errorf("grpc tls: %w", err)
	}
	return tokencheck.DialCredentials(cfg.ConsoleAuthAddress, creds, log, opts...)
}

// newServer is the agent's gRPC server: the ComputeAgentService answering
// from drv, only to consoleauth (grpcapi.Policy), and grpc.health.v1, open
// to anyone.
func newServer(cfg Config, drv driver.Driver, log *slog.Logger, kit grpcserver.Options) (*grpc.Server, *health.Server, error) {
	creds, err := cfg.GRPCTLS.ServerOption()
	if err != nil {
		return nil, nil, fmt.Errorf("grpc tls: %w", err)
	}
	roleSource, err := authn.ParseRoleSource(cfg.CertRoleSource)
	if err != nil {
		return nil, nil, err
	}
	guard := authn.NewGuard(authn.GuardOptions{Policy: grpcapi.Policy, Open: authn.HealthMethods, RoleSource: roleSource,
		NoCertificate: "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca", Log: log})
	// Request ids, metrics, the rpc log line and tracing (package
	// grpcserver) come before the guard, so its refusals carry the id.
	srv := grpc.NewServer(append(grpcserver.ServerOptions(kit), creds, grpc.MaxRecvMsgSize(grpcapi.MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(guard.UnaryInterceptor()), grpc.ChainStreamInterceptor(guard.StreamInterceptor()))...)
	computeagentv1.RegisterComputeAgentServiceServer(srv, grpcapi.New(drv, cfg.ProxyClientAddress, log))
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)
	kit.Metrics.Initialize(srv)
	return srv, healthSrv, nil
}

// openDriver builds the driver named by cfg.Driver and, when it has one,
// the loop to run beside it until ctx ends.
func openDriver(cfg Config, log *slog.Logger) (driver.Driver, func(context.Context), error) {
	switch cfg.Driver {
	case "static":
		if cfg.InventoryFile == "" {
			return nil, nil, errors.New("driver static needs inventory_file")
		}
		d, err := static.Open(cfg.InventoryFile, static.Options{Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("driver static: %w", err)
		}
		return d, d.Run, nil
	case "libvirt":
		d, err := libvirt.New(libvirt.Config{URI: cfg.LibvirtURI, ProxyClientAddress: cfg.ProxyClientAddress, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("driver libvirt: %w", err)
		}
		return d, func(ctx context.Context) { <-ctx.Done(); d.Close() }, nil
	case "qmp":
		instances, err := qmp.ParseSockets(cfg.QMPSockets)
		if err != nil {
			return nil, nil, fmt.Errorf("driver qmp: %w", err)
		}
		d, err := qmp.New(qmp.Config{Instances: instances, ProxyClientAddress: cfg.ProxyClientAddress, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("driver qmp: %w", err)
		}
		return d, func(ctx context.Context) { <-ctx.Done(); d.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("driver %q unknown (want static, libvirt or qmp)", cfg.Driver)
	}
}

func reloadOnSignal(ctx context.Context, sig <-chan os.Signal, r interface{ Reload() error }, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			log.Info("reloading the driver's configuration")
			if err := r.Reload(); err != nil {
				log.Error("reload failed", "error", err)
			}
		}
	}
}
