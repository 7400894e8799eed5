package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/revocation"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/xvp-proxy/internal/proxy"
	"google.golang.org/grpc"
)

// run serves until ctx ends, then drains and returns. ready, if not nil, is
// called once clients can connect, with the client listener's address and
// the metrics listener's (nil when metrics_listen is empty).
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(clients, metrics net.Addr)) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := cfg.checkPlaintext(); err != nil {
		return err
	}
	trusted, err := edge.ParseTrust(cfg.TrustedProxies)
	if err != nil {
		return err
	}
	warnings, err := cfg.public().Check()
	if err != nil {
		return err
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	listenerTLS, err := cfg.public().Config()
	if err != nil {
		return fmt.Errorf("listener tls: %w", err)
	}
	grpcCreds, err := cfg.GRPC.ClientCredentials()
	if err != nil {
		return fmt.Errorf("consoleauth tls: %w", err)
	}
	caConn, err := tokencheck.DialCredentials(cfg.ConsoleAuthAddress, grpcCreds, log)
	if err != nil {
		return err
	}
	defer caConn.Close()

	metrics := proxymetrics.NewRegistry()
	counted := proxymetrics.New(metrics)
	caps := edge.NewCaps(cfg.MaxConnections, cfg.MaxConnectionsPerClient, counted)
	rfbCfg, err := cfg.RFB.Config()
	if err != nil {
		return err
	}
	core := sessions.New(sessions.Config{
		ConsoleType:      proxy.ConsoleType,
		Checker:          tokencheck.New(caConn, 0),
		Dialer:           backend.Dialer{Timeout: cfg.HandshakeTimeout, KeepAlive: cfg.TCPKeepAlive},
		FailBan:          failban.New(cfg.FailedTokenLimit, cfg.FailedTokenWindow),
		MaxPerInstance:   cfg.MaxSessionsPerInstance,
		Metrics:          counted,
		Log:              log,
		HandshakeTimeout: cfg.HandshakeTimeout,
		IdleTimeout:      cfg.IdleTimeout,
		MaxSessionLength: cfg.MaxSessionLength,
		RFB:              rfbCfg,
	})
	srv := proxy.New(proxy.Config{
		Core:             core,
		Log:              log,
		HandshakeTimeout: cfg.HandshakeTimeout,
		DrainTimeout:     cfg.DrainTimeout,
		TLS:              listenerTLS,
		Trusted:          trusted,
		Caps:             caps,
	})

	if len(cfg.EtcdEndpoints) > 0 {
		cli, err := etcdclient.New(cfg.EtcdEndpoints, cfg.Etcd)
		if err != nil {
			return err
		}
		defer cli.Close()
		watchCtx, stopWatching := context.WithCancel(ctx)
		var watcher sync.WaitGroup
		watcher.Go(func() { revocation.Watch(watchCtx, cli, log, core.Revoke) })
		defer func() { stopWatching(); watcher.Wait() }() // before cli.Close
	} else {
		log.Warn("etcd_endpoints is empty: revocations will not end live sessions")
	}

	var metricsAddr net.Addr
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen: %w", err)
		}
		metricsAddr = ml.Addr()
		stop := serveMetrics(ml, metrics, consoleAuthReadiness(srv.ServeHealth, core, caConn), log)
		defer stop() // after Serve: /healthz answers 503 while sessions drain
		log.Info("metrics listening", "addr", metricsAddr.String())
	}

	l, err := listen(ctx, cfg, edge.Options{Caps: caps, Trusted: trusted, Refuse: srv.RefuseOverCap, Metrics: counted, Log: log})
	if err != nil {
		return err
	}
	log.Info("listening", "addr", l.Addr().String(), "tls", cfg.Cert != "", "consoleauth", cfg.ConsoleAuthAddress,
		"trusted_proxies", cfg.TrustedProxies, "max_connections", cfg.MaxConnections, "max_connections_per_client", cfg.MaxConnectionsPerClient)
	if ready != nil {
		ready(l.Addr(), metricsAddr)
	}
	err = srv.Serve(ctx, l)
	log.Info("stopped")
	return err
}

// consoleAuthReadiness makes health answer 503 "consoleauth unreachable"
// while no consoleauth replica can check a token (a load balancer then
// sends new clients to another proxy); draining keeps its own answer.
func consoleAuthReadiness(health http.HandlerFunc, core *sessions.Core, conn *grpc.ClientConn) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !core.Draining() && tokencheck.WriteUnreachable(w, conn, core.Len()) {
			return
		}
		health(w, r)
	}
}

// serveMetrics serves GET /metrics (reg) and GET /healthz (health) over
// plain HTTP on l until the returned stop is called.
func serveMetrics(l net.Listener, reg *prometheus.Registry, health http.HandlerFunc, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", proxymetrics.Handler(reg))
	mux.HandleFunc("GET /healthz", health)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics listener failed", "error", err)
		}
	}
}

// listen opens the client listener: raw TCP (the proxy reads a PROXY
// header, then runs TLS), under an accept loop that survives running out of
// file descriptors and caps connections (package edge).
func listen(ctx context.Context, cfg Config, opts edge.Options) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: cfg.TCPKeepAlive}
	network, addr := config.ListenAddr(cfg.Host, cfg.Port, cfg.SourceIsIPv6)
	l, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return edge.NewListener(l, opts), nil
}
