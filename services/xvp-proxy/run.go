package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/proxymetrics"
	"github.com/vncgate/vncgate/pkg/revocation"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/xvp-proxy/internal/proxy"
	"google.golang.org/grpc"
)

// run serves until ctx ends, then drains and returns: readiness goes red
// at once while clients are still accepted for cfg.ShutdownDelay (a load
// balancer notices first), then the port closes and live sessions get
// cfg.DrainTimeout before they are closed. ready, if not nil, is
// called once clients can connect, with the client listener's address and
// the admin listener's (nil when admin_listen is empty).
func run(ctx context.Context, cfg Config, log *slog.Logger, ready func(clients, admin net.Addr)) error {
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
	metrics := proxymetrics.NewRegistry()
	// Client metrics of the token checks (latency and codes by method).
	clientKit := grpcserver.Options{Metrics: grpcserver.NewClientMetrics(metrics)}
	caConn, err := tokencheck.DialCredentials(cfg.ConsoleAuthAddress, grpcCreds, log, grpcserver.DialOptions(clientKit)...)
	if err != nil {
		return err
	}
	defer caConn.Close()

	counted := proxymetrics.New(metrics)
	caps := edge.NewCaps(cfg.MaxConnections, cfg.MaxConnectionsPerClient, counted)
	rfbCfg, err := cfg.RFB.Config()
	if err != nil {
		return err
	}
	// One etcd client (revocations, live sessions, kills, drains), the
	// audit outputs, the live sessions' publisher.
	day2, err := cfg.Live.Open("xvp-proxy", proxy.ConsoleType, cfg.Port, cfg.EtcdEndpoints, cfg.Etcd, log)
	if err != nil {
		return err
	}
	defer day2.Close() // last: revokes the lease, so the records vanish now
	cli, live, proxyName := day2.Etcd, day2.Live, day2.Name
	checker := tokencheck.New(caConn, 0)
	checker.Register(metrics)
	core := sessions.New(sessions.Config{
		ProxyName:        proxyName,
		Live:             live.Live(),
		Audit:            day2.Audit,
		RefusalCode:      proxy.RefusalStatus,
		ConsoleType:      proxy.ConsoleType,
		Checker:          checker,
		Dialer:           backend.Dialer{Timeout: cfg.HandshakeTimeout, KeepAlive: cfg.TCPKeepAlive, GreetingTimeout: cfg.ServerGreetingTimeout},
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

	var watch *revocation.Status // nil: no revocation watch
	if cli != nil {
		watch = new(revocation.Status)
		// Not ended by ctx: sessions draining after SIGTERM stay revocable.
		watchCtx, stopWatching := context.WithCancel(context.WithoutCancel(ctx))
		var watcher sync.WaitGroup
		watcher.Go(func() { revocation.WatchStatus(watchCtx, cli, log, core.Revoke, watch) })
		defer func() { stopWatching(); watcher.Wait() }() // before cli.Close
	} else {
		log.Warn("etcd_endpoints is empty: revocations will not end live sessions")
	}

	al, err := admin.Listen(cfg.AdminListen, cfg.AllowPlaintext || cfg.AdminAllowRemote)
	if err != nil {
		return err
	}
	adminSrv := admin.Serve(al, admin.Options{
		Metrics: metrics,
		Ready:   admin.ProxyReadiness(core.Draining, func() bool { return grpcclient.Ready(caConn) }, watchHealthy(watch)),
		Routes:  map[string]http.Handler{"GET /healthz": consoleAuthReadiness(srv.ServeHealth, core, caConn)},
		Log:     log,
	})
	defer adminSrv.Stop() // after Serve: /healthz and /readyz answer 503 while sessions drain

	l, err := listen(ctx, cfg, edge.Options{Caps: caps, Trusted: trusted, Refuse: srv.RefuseOverCap, Metrics: counted, Log: log})
	if err != nil {
		return err
	}
	live.Serve(core, l.Addr(), cfg.ShutdownDelay)
	log.Info("listening", "addr", l.Addr().String(), "proxy", proxyName, "tls", cfg.Cert != "", "consoleauth", cfg.ConsoleAuthAddress,
		"trusted_proxies", cfg.TrustedProxies, "max_connections", cfg.MaxConnections, "max_connections_per_client", cfg.MaxConnectionsPerClient)
	if ready != nil {
		ready(l.Addr(), adminSrv.Addr())
	}
	err = srv.Serve(delayed(ctx, cfg.ShutdownDelay, func() {
		core.Unready()
		live.SetDraining(time.Now().Add(cfg.ShutdownDelay + cfg.DrainTimeout))
		log.Info("shutting down: readiness red, still accepting", "shutdown_delay", cfg.ShutdownDelay.String(), "sessions", core.Len())
	}), l)
	log.Info("stopped")
	return err
}

// delayed returns a context that ends d after ctx ends; onEnd runs when
// ctx ends. Serve stops accepting when the returned context ends.
func delayed(ctx context.Context, d time.Duration, onEnd func()) context.Context {
	later, cancel := context.WithCancel(context.WithoutCancel(ctx))
	context.AfterFunc(ctx, func() {
		onEnd()
		time.AfterFunc(d, cancel)
	})
	return later
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

// watchHealthy is the revocation watch's readiness check, nil without a
// watch.
func watchHealthy(watch *revocation.Status) func() bool {
	if watch == nil {
		return nil
	}
	return watch.Healthy
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
