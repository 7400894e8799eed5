// Package server assembles the consoleauth process: the etcd client, the
// token store, the compute agent client pool, the gRPC server (with
// grpc.health.v1: SERVING while etcd answers, NOT_SERVING while it does
// not and from the start of Shutdown, for callers to turn to other
// replicas) and the REST gateway in front of it. Start returns once every
// listener is bound, so a test can start a whole consoleauth on loopback
// ports and talk to it.
//
// The REST gateway reaches the service through a second, in-process gRPC
// server with the same interceptors: REST requests run through exactly the
// gRPC path, without the gateway needing a client certificate for the
// public, possibly mTLS, listener.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/authserver"
	"github.com/vncgate/vncgate/services/consoleauth/internal/gateway"
	"github.com/vncgate/vncgate/services/consoleauth/internal/keystone"
	"github.com/vncgate/vncgate/services/consoleauth/internal/operations"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"
)

// Config is the service's configuration (its options: see
// services/consoleauth/config.go).
type Config struct {
	GRPCListen string
	RESTListen string

	EtcdEndpoints []string
	EtcdTLS       tlsconfig.Files
	// EtcdTimeout bounds every etcd call.
	EtcdTimeout time.Duration

	// GRPCTLS is mTLS for the gRPC server and for calls to compute agents.
	GRPCTLS tlsconfig.Files
	// RESTTLS is TLS for the REST listener; with a CA, callers (the cloud's
	// API layer) must present a certificate it signed. Without it REST is
	// plaintext, for loopback only: it mints tokens and revokes them.
	RESTTLS tlsconfig.Files
	// ComputeTimeout bounds every call to a compute agent.
	ComputeTimeout time.Duration

	TokenTTL time.Duration
	// TokenCacheSize bounds the token records kept in memory
	// (tokenstore.Options.TokenCacheSize: 0 the default, negative none).
	TokenCacheSize      int
	NoVNCBaseURL        string
	XVPBaseURL          string
	EnabledConsoleTypes []string
	SingleUseTokens     bool

	// AllowPlaintext is [vncgate] allow_plaintext: a plaintext listener off
	// loopback is refused without it.
	AllowPlaintext bool
	// CertRoleSource is [vncgate] cert_role_source: where certificates
	// name their role (san or subject).
	CertRoleSource string
	// APIKeysFile is [vncgate] api_keys_file: REST bearer keys.
	APIKeysFile string
	// RESTAuth is [vncgate] rest_auth: "keys" (bearer keys and
	// certificates) or "keystone" (Keystone tokens too).
	RESTAuth string
	// Keystone is [keystone_authtoken], for rest_auth = keystone.
	Keystone keystone.Options
	// KeystoneMintRoles is [vncgate] keystone_mint_roles.
	KeystoneMintRoles []string
	// TokenValidator, when set, validates Keystone tokens instead of a
	// client built from Keystone (tests).
	TokenValidator authn.TokenValidator
	// RESTAllowedHosts is [vncgate] rest_allowed_hosts: the names a REST
	// request's Host header may carry besides localhost, 127.0.0.1 and ::1
	// ("*": any). Empty: rest_listen's host; with rest_listen on all
	// interfaces, any name for callers with a certificate.
	RESTAllowedHosts []string

	// ShutdownTimeout bounds the graceful part of Shutdown.
	ShutdownTimeout time.Duration
	// Tracing traces gRPC calls (grpcserver.StartTracing); nil: off.
	Tracing *grpcserver.Tracing
	// DrainTimeout is [vncgate] drain_timeout: the deadline of a proxy
	// drain that names none (OperationsService.DrainProxy).
	DrainTimeout time.Duration
}

// Server is a running consoleauth.
type Server struct {
	log        *slog.Logger
	grpcLis    net.Listener
	restLis    net.Listener
	grpcServer *grpc.Server // public listener
	gwServer   *grpc.Server // in-process listener of the gateway
	gwConn     *grpc.ClientConn
	httpServer *http.Server
	agents     *agentclient.Pool
	etcd       *clientv3.Client
	keystone   *keystone.Validator // closed on shutdown; nil without rest_auth = keystone
	health     *health.Server      // grpc.health.v1 of the public listener
	stopFollow context.CancelFunc  // ends followEtcd
	following  sync.WaitGroup
	draining   atomic.Bool
	timeout    time.Duration
	serveErr   chan error
	stopOnce   sync.Once
	cancelGW   context.CancelFunc
	metrics    *prometheus.Registry // served by the admin listener
	store      *tokenstore.Store
}

// Start builds consoleauth and starts serving on its listeners.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	noVNCBase, err := authserver.ParseBaseURL("novncproxy_base_url", cfg.NoVNCBaseURL)
	if err != nil {
		return nil, err
	}
	xvpBase, err := authserver.ParseBaseURL("xvpvncproxy_base_url", cfg.XVPBaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	roleSource, err := authn.ParseRoleSource(cfg.CertRoleSource)
	if err != nil {
		return nil, err
	}
	if !cfg.GRPCTLS.Enabled() {
		if err := tlsconfig.CheckPlaintext("grpc_listen", cfg.GRPCListen, cfg.AllowPlaintext); err != nil {
			return nil, err
		}
	}
	if !cfg.RESTTLS.Enabled() {
		if err := tlsconfig.CheckPlaintext("rest_listen", cfg.RESTListen, cfg.AllowPlaintext); err != nil {
			return nil, err
		}
	}
	cfg.GRPCTLS.Log, cfg.RESTTLS.Log, cfg.EtcdTLS.Log = log, log, log

	s := &Server{log: log, timeout: cfg.ShutdownTimeout, serveErr: make(chan error, 3)}
	// On a failed start, release whatever was built.
	defer func() {
		if err != nil {
			s.stop()
		}
	}()

	// The client connects in the background, so consoleauth starts (and
	// answers 503) while etcd is still down.
	if s.etcd, err = etcdclient.New(cfg.EtcdEndpoints, cfg.EtcdTLS); err != nil {
		return nil, err
	}
	store, err := tokenstore.New(s.etcd, tokenstore.Options{TTL: cfg.TokenTTL, Timeout: cfg.EtcdTimeout,
		TokenCacheSize: cfg.TokenCacheSize, Logger: log})
	if err != nil {
		return nil, err
	}

	serverCreds, err := cfg.GRPCTLS.ServerOption()
	if err != nil {
		return nil, fmt.Errorf("grpc server tls: %w", err)
	}
	agentCreds, err := cfg.GRPCTLS.ClientCredentials()
	if err != nil {
		return nil, fmt.Errorf("grpc client tls: %w", err)
	}
	reg := prometheus.NewRegistry()
	s.metrics, s.store = reg, store
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kit := grpcserver.Options{Log: log, Metrics: grpcserver.NewMetrics(reg), Tracing: cfg.Tracing, Quiet: authserver.EtcdOutage}
	s.agents = agentclient.New(agentclient.Options{Timeout: cfg.ComputeTimeout, TLS: agentCreds, DialOptions: grpcserver.DialOptions(kit), Log: log})
	svc, err := authserver.New(authserver.Config{
		NoVNCBaseURL: noVNCBase,
		XVPBaseURL:   xvpBase,
		EnabledTypes: cfg.EnabledConsoleTypes,
		SingleUse:    cfg.SingleUseTokens,
	}, store, s.agents, log, authserver.NewMetrics(reg))
	if err != nil {
		return nil, err
	}

	auth, err := restAuth(cfg, roleSource, log)
	if err != nil {
		return nil, err
	}
	s.keystone = ownedValidator(auth.Keystone)
	// Both servers guard every call with the same policy: the public one
	// knows callers by their certificates, the gateway's by what the
	// gateway authenticated.
	guard := authn.NewGuard(authn.GuardOptions{Policy: Policy, Open: authn.HealthMethods, RoleSource: roleSource,
		NoCertificate: noCertificate, Log: log})
	gwGuard := authn.NewGuard(authn.GuardOptions{Policy: Policy, Open: authn.HealthMethods, GatewaySecret: auth.GatewaySecret, Log: log})
	// Request ids, metrics, the rpc log line and tracing (package
	// grpcserver) come before the guard, so its refusals carry the id.
	s.grpcServer = grpc.NewServer(append(grpcserver.ServerOptions(kit), serverCreds, grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(guard.UnaryInterceptor()), grpc.ChainStreamInterceptor(guard.StreamInterceptor()))...)
	consoleauthv1.RegisterConsoleAuthServiceServer(s.grpcServer, svc)
	ops := operations.New(s.etcd, operations.Options{Timeout: cfg.EtcdTimeout, Drain: cfg.DrainTimeout, Log: log})
	consoleauthv1.RegisterOperationsServiceServer(s.grpcServer, ops)
	// Callers (proxies, agents: package grpcclient) watch it and send
	// their calls to replicas that say SERVING.
	s.health = health.NewServer()
	s.setServing(false)
	healthpb.RegisterHealthServer(s.grpcServer, s.health)
	kit.Metrics.Initialize(s.grpcServer)
	s.gwServer = grpc.NewServer(append(grpcserver.ServerOptions(kit), grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(gwGuard.UnaryInterceptor()), grpc.ChainStreamInterceptor(gwGuard.StreamInterceptor()))...)
	consoleauthv1.RegisterConsoleAuthServiceServer(s.gwServer, svc)
	consoleauthv1.RegisterOperationsServiceServer(s.gwServer, ops)

	gwLis := bufconn.Listen(1 << 20)
	s.gwConn, err = grpc.NewClient("passthrough:///consoleauth-internal",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return gwLis.DialContext(ctx) }))
	if err != nil {
		return nil, fmt.Errorf("gateway connection: %w", err)
	}
	var gwCtx context.Context
	gwCtx, s.cancelGW = context.WithCancel(context.WithoutCancel(ctx))
	handler, err := gateway.New(gwCtx, s.gwConn, gateway.Options{
		Health: func(ctx context.Context) error {
			if s.draining.Load() {
				return errors.New("shutting down")
			}
			return store.Ping(ctx)
		},
		Auth: auth,
		Log:  log,
	})
	if err != nil {
		return nil, err
	}
	s.httpServer = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCListen); err != nil {
		return nil, fmt.Errorf("grpc listen: %w", err)
	}
	// With bearer keys or Keystone tokens, a TLS caller need not present a
	// certificate; one that does must be the CA's.
	restTLS, err := cfg.RESTTLS.Server()
	if auth.Keys != nil || auth.Keystone != nil {
		restTLS, err = cfg.RESTTLS.ServerCertOptional()
	}
	if err != nil {
		return nil, fmt.Errorf("rest tls: %w", err)
	}
	if s.restLis, err = net.Listen("tcp", cfg.RESTListen); err != nil {
		return nil, fmt.Errorf("rest listen: %w", err)
	}
	if restTLS != nil {
		s.restLis = tls.NewListener(s.restLis, restTLS)
	}
	var followCtx context.Context
	followCtx, s.stopFollow = context.WithCancel(context.WithoutCancel(ctx))
	s.following.Go(func() { s.followEtcd(followCtx, store.Health) })
	go s.serve("grpc", func() error { return s.grpcServer.Serve(s.grpcLis) })
	go s.serve("gateway grpc", func() error { return s.gwServer.Serve(gwLis) })
	go s.serve("rest", func() error { return s.httpServer.Serve(s.restLis) })

	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := store.Ping(pctx); err != nil {
		log.Warn("etcd not reachable yet; serving 503 until it is", "endpoints", cfg.EtcdEndpoints, "error", err)
	}
	return s, nil
}

// maxHeaderBytes caps a REST request's head: credentials and Nova's
// headers fit in far less.
const maxHeaderBytes = 16 << 10

// restAuth builds how REST callers authenticate, and refuses a REST API
// no one could call.
func restAuth(cfg Config, roleSource authn.RoleSource, log *slog.Logger) (gateway.Auth, error) {
	a := gateway.Auth{RoleSource: roleSource, GatewaySecret: authn.NewGatewaySecret(), MintRoles: cfg.KeystoneMintRoles}
	if a.MintRoles == nil {
		a.MintRoles = authn.DefaultKeystoneMintRoles
	}
	if cfg.APIKeysFile != "" {
		keys, err := authn.LoadKeyFile(cfg.APIKeysFile, log)
		if err != nil {
			return a, err
		}
		a.Keys = keys
	}
	switch cfg.RESTAuth {
	case "", "keys":
	case "keystone":
		a.Keystone, a.KeystoneURI = cfg.TokenValidator, cfg.Keystone.AuthURL
		if a.Keystone == nil {
			o := cfg.Keystone
			o.AllowPlaintext = cfg.AllowPlaintext
			v, err := keystone.New(o, log)
			if err != nil {
				return a, fmt.Errorf("rest_auth = keystone: %w", err)
			}
			a.Keystone = keystoneValidator{v}
		}
	default:
		return a, fmt.Errorf("rest_auth %.40q: want keys or keystone", cfg.RESTAuth)
	}
	if a.Keys == nil && a.Keystone == nil && cfg.RESTTLS.CA == "" {
		return a, errors.New("the REST API has no way to authenticate callers: set [vncgate] api_keys_file " +
			"(make keys with `consoleauth keygen NAME ROLE`), rest_ca (client certificates), or rest_auth = keystone")
	}
	// Loopback names are always allowed: a DNS-rebinding page makes the
	// browser send its own name, never these.
	a.AllowedHosts = append([]string{"localhost", "127.0.0.1", "::1"}, cfg.RESTAllowedHosts...)
	if len(cfg.RESTAllowedHosts) == 0 {
		host, _, err := net.SplitHostPort(cfg.RESTListen)
		if err != nil {
			return a, fmt.Errorf("rest_listen: %w", err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			a.AnyHostWithCertificate = true
		} else {
			a.AllowedHosts = append(a.AllowedHosts, host)
		}
	}
	return a, nil
}

// GRPCAddr is the bound address of the gRPC listener.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// RESTAddr is the bound address of the REST listener.
func (s *Server) RESTAddr() string { return s.restLis.Addr().String() }

// Metrics is consoleauth's Prometheus registry, for the admin listener
// (not the REST port: /metrics is for operators, not API callers).
func (s *Server) Metrics() prometheus.Gatherer { return s.metrics }

// EtcdHealthy reports whether etcd answered the token store's latest probe.
func (s *Server) EtcdHealthy() bool { return s.store.Healthy() }

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Err delivers errors that stop a listener before Shutdown.
func (s *Server) Err() <-chan error { return s.serveErr }

// Shutdown stops in two phases: /healthz turns red and the listeners stop
// accepting, then in-flight requests get up to the shutdown timeout to
// finish before connections are closed.
func (s *Server) Shutdown() error {
	var err error
	s.stopOnce.Do(func() {
		s.draining.Store(true)
		// NOT_SERVING first: callers stop sending new calls here.
		s.health.Shutdown()
		s.endFollow()
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		// REST first: its requests run through the gateway's gRPC server.
		if herr := s.httpServer.Shutdown(ctx); herr != nil {
			err = fmt.Errorf("rest shutdown: %w", herr)
			_ = s.httpServer.Close()
		}
		gracefulStop(ctx, s.grpcServer)
		gracefulStop(ctx, s.gwServer)
		s.release()
	})
	return err
}

// stop tears down a partly started server.
func (s *Server) stop() {
	s.stopOnce.Do(func() {
		if s.httpServer != nil {
			_ = s.httpServer.Close()
		}
		if s.grpcServer != nil {
			s.grpcServer.Stop()
		}
		if s.gwServer != nil {
			s.gwServer.Stop()
		}
		if s.grpcLis != nil {
			_ = s.grpcLis.Close()
		}
		if s.restLis != nil {
			_ = s.restLis.Close()
		}
		s.release()
	})
}

func (s *Server) release() {
	s.endFollow()
	if s.cancelGW != nil {
		s.cancelGW()
	}
	if s.gwConn != nil {
		_ = s.gwConn.Close()
	}
	if s.agents != nil {
		_ = s.agents.Close()
	}
	if s.etcd != nil {
		_ = s.etcd.Close()
	}
	if s.keystone != nil {
		s.keystone.Close()
	}
}

// followEtcd keeps grpc.health.v1 saying SERVING while the token store
// finds etcd answering (its health probe, which logs each change) and
// NOT_SERVING while it does not, until ctx ends.
func (s *Server) followEtcd(ctx context.Context, health func() (bool, <-chan struct{})) {
	for {
		ok, changed := health()
		s.setServing(ok)
		s.log.Debug("gRPC health follows etcd", "serving", ok)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// setServing sets the health of the server as a whole ("") and of the
// ConsoleAuthService; after health.Shutdown it changes nothing.
func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(consoleauthv1.ConsoleAuthService_ServiceDesc.ServiceName, st)
}

// endFollow stops followEtcd and waits for it.
func (s *Server) endFollow() {
	if s.stopFollow != nil {
		s.stopFollow()
	}
	s.following.Wait()
}

// gracefulStop waits for in-flight RPCs until ctx ends, then cuts them.
func gracefulStop(ctx context.Context, srv *grpc.Server) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		srv.Stop()
		<-done
	}
}

// serve runs one listener's loop and reports an error that stops it before
// Shutdown.
func (s *Server) serve(name string, loop func() error) {
	err := loop()
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		return
	}
	s.serveErr <- fmt.Errorf("%s server: %w", name, err)
}
