// Package server assembles the consoleauth process: the etcd client, the
// token store, the compute agent client pool, the gRPC server and the REST
// gateway in front of it. Start returns once every listener is bound, so a
// test can start a whole consoleauth on loopback ports and talk to it.
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
	"github.com/prometheus/client_golang/prometheus/promhttp"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/authserver"
	"github.com/vncgate/vncgate/services/consoleauth/internal/gateway"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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

	TokenTTL            time.Duration
	NoVNCBaseURL        string
	XVPBaseURL          string
	EnabledConsoleTypes []string
	SingleUseTokens     bool

	// ShutdownTimeout bounds the graceful part of Shutdown.
	ShutdownTimeout time.Duration
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
	draining   atomic.Bool
	timeout    time.Duration
	serveErr   chan error
	stopOnce   sync.Once
	cancelGW   context.CancelFunc
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
	store, err := tokenstore.New(s.etcd, tokenstore.Options{TTL: cfg.TokenTTL, Timeout: cfg.EtcdTimeout})
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
	s.agents = agentclient.New(agentclient.Options{Timeout: cfg.ComputeTimeout, TLS: agentCreds})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := authserver.New(authserver.Config{
		NoVNCBaseURL: noVNCBase,
		XVPBaseURL:   xvpBase,
		EnabledTypes: cfg.EnabledConsoleTypes,
		SingleUse:    cfg.SingleUseTokens,
	}, store, s.agents, log, authserver.NewMetrics(reg))
	if err != nil {
		return nil, err
	}

	interceptor := grpc.ChainUnaryInterceptor(authserver.LogUnary(log))
	s.grpcServer = grpc.NewServer(interceptor, serverCreds)
	consoleauthv1.RegisterConsoleAuthServiceServer(s.grpcServer, svc)
	s.gwServer = grpc.NewServer(interceptor)
	consoleauthv1.RegisterConsoleAuthServiceServer(s.gwServer, svc)

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
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Log:     log,
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
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCListen); err != nil {
		return nil, fmt.Errorf("grpc listen: %w", err)
	}
	restTLS, err := cfg.RESTTLS.Server()
	if err != nil {
		return nil, fmt.Errorf("rest tls: %w", err)
	}
	if s.restLis, err = net.Listen("tcp", cfg.RESTListen); err != nil {
		return nil, fmt.Errorf("rest listen: %w", err)
	}
	if restTLS != nil {
		s.restLis = tls.NewListener(s.restLis, restTLS)
	}
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

// GRPCAddr is the bound address of the gRPC listener.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// RESTAddr is the bound address of the REST listener.
func (s *Server) RESTAddr() string { return s.restLis.Addr().String() }

// Err delivers errors that stop a listener before Shutdown.
func (s *Server) Err() <-chan error { return s.serveErr }

// Shutdown stops in two phases: /healthz turns red and the listeners stop
// accepting, then in-flight requests get up to the shutdown timeout to
// finish before connections are closed.
func (s *Server) Shutdown() error {
	var err error
	s.stopOnce.Do(func() {
		s.draining.Store(true)
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
