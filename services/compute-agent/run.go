package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/libvirt"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/qmp"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/static"
	"github.com/vncgate/vncgate/services/compute-agent/internal/etcdconn"
	"github.com/vncgate/vncgate/services/compute-agent/internal/grpcapi"
	"github.com/vncgate/vncgate/services/compute-agent/internal/registration"
	"github.com/vncgate/vncgate/services/compute-agent/internal/revoker"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
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
}

// run serves the agent until ctx ends or the gRPC server fails. Shutdown:
// health goes NOT_SERVING and the registration lease is revoked first, then
// in-flight RPCs get drainTimeout to finish.
func run(ctx context.Context, cfg Config, env env) error {
	log := env.log
	if err := cfg.validate(); err != nil {
		return err
	}
	drv, background, err := openDriver(cfg, log)
	if err != nil {
		return err
	}
	serverTLS, err := cfg.GRPCTLS.Server()
	if err != nil {
		return fmt.Errorf("grpc tls: %w", err)
	}
	clientTLS, err := cfg.GRPCTLS.Client()
	if err != nil {
		return fmt.Errorf("grpc tls: %w", err)
	}
	etcdTLS, err := cfg.EtcdTLS.Client()
	if err != nil {
		return fmt.Errorf("etcd tls: %w", err)
	}

	etcd, err := clientv3.New(etcdconn.Config(cfg.EtcdEndpoints, etcdTLS))
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer etcd.Close()
	caConn, err := grpc.NewClient(cfg.ConsoleAuthAddress, transportCredentials(clientTLS))
	if err != nil {
		return fmt.Errorf("consoleauth client: %w", err)
	}
	defer caConn.Close()

	l, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}
	defer l.Close()
	advertise := cfg.AdvertiseAddress
	if advertise == "" {
		advertise = advertiseFrom(l.Addr())
	}
	agent, err := registration.New(registration.Config{
		Client:  etcd,
		Host:    cfg.Host,
		Address: advertise,
		TTL:     cfg.RegistrationTTL,
		Driver:  drv,
		Revoker: revoker.New(consoleauthv1.NewConsoleAuthServiceClient(caConn), log),
		Logger:  log,
	})
	if err != nil {
		return err
	}

	var opts []grpc.ServerOption
	if serverTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(serverTLS)))
	}
	srv := grpc.NewServer(opts...)
	computeagentv1.RegisterComputeAgentServiceServer(srv, grpcapi.New(drv, cfg.ProxyClientAddress, log))
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)

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
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	log.Info("compute agent serving", "grpc", l.Addr().String(), "advertise", advertise, "host", cfg.Host,
		"driver", cfg.Driver, "etcd", cfg.EtcdEndpoints, "tls", serverTLS != nil)
	if env.ready != nil {
		env.ready(l.Addr().String())
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
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(drainTimeout):
		srv.Stop()
		<-stopped
	}
	return runErr
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
				log.Error("reload failed", "err", err)
			}
		}
	}
}

func transportCredentials(c *tls.Config) grpc.DialOption {
	if c == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(c))
}
