package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/forwarded"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/origin"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/proxy"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/tlssniff"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/web"
	"google.golang.org/grpc"
)

// endGrace is how long ended sessions get for their close handshakes.
const endGrace = 10 * time.Second

// run serves until ctx ends, then shuts down in three phases: readiness
// goes red while the port still accepts and serves consoles for
// cfg.ShutdownDelay (a load balancer notices and sends new users
// elsewhere); then the port closes and live sessions get cfg.DrainTimeout
// to end; then they are closed with 1012 "service restart", on which the
// console page reconnects through the load balancer with the same token.
// listening, if not nil, is told the bound address once the port is open.
func run(ctx context.Context, cfg Config, log *slog.Logger, listening func(net.Addr)) error {
	return runAdmin(ctx, cfg, log, listening, nil)
}

// runAdmin is run telling adminListening, if not nil, the admin listener's
// address (nil when admin_listen is empty) before the public port opens.
func runAdmin(ctx context.Context, cfg Config, log *slog.Logger, listening, adminListening func(net.Addr)) error {
	if err := cfg.checkPlaintext(); err != nil {
		return err
	}
	if cfg.Cert != "" && !cfg.SSLOnly {
		log.Warn("cert is set but ssl_only is not: plain HTTP is served on the same port, so console tokens may travel unencrypted; set ssl_only = true")
	}
	pages, pagesFrom, err := webHandler(cfg)
	if err != nil {
		return err
	}
	policy, err := origin.NewPolicy(cfg.BaseURL, cfg.AllowedOrigins)
	if err != nil {
		return err
	}
	trust, err := forwarded.ParseTrust(cfg.TrustedProxies)
	if err != nil {
		return err
	}
	publicTLS, err := publicTLSConfig(cfg, log)
	if err != nil {
		return err
	}
	grpcCreds, err := cfg.GRPC.ClientCredentials()
	if err != nil {
		return fmt.Errorf("grpc tls: %w", err)
	}
	metrics := proxymetrics.NewRegistry()
	// Client metrics of the token checks (latency and codes by method).
	clientKit := grpcserver.Options{Metrics: grpcserver.NewClientMetrics(metrics)}
	conn, err := tokencheck.DialCredentials(cfg.ConsoleAuthAddress, grpcCreds, log, grpcserver.DialOptions(clientKit)...)
	if err != nil {
		return err
	}
	defer conn.Close()

	counted := proxymetrics.New(metrics)
	caps := edge.NewCaps(cfg.MaxConnections, cfg.MaxConnectionsPerClient, counted)
	revocationGrace := cfg.RevocationGrace
	if len(cfg.EtcdEndpoints) == 0 {
		revocationGrace = 0 // no revocation can come
	}
	rfbCfg, err := cfg.RFB.Config()
	if err != nil {
		return err
	}
	// One etcd client (revocations, live sessions, kills, drains), the
	// audit outputs, the live sessions' publisher.
	day2, err := cfg.Live.Open("novnc-proxy", proxy.ConsoleType, cfg.Port, cfg.EtcdEndpoints, cfg.Etcd, log)
	if err != nil {
		return err
	}
	defer day2.Close() // last: revokes the lease, so the records vanish now
	cli, live, proxyName := day2.Etcd, day2.Live, day2.Name
	checker := tokencheck.New(conn, cfg.HandshakeTimeout)
	checker.Register(metrics)
	core := sessions.New(sessions.Config{
		ProxyName:             proxyName,
		Live:                  live.Live(),
		Audit:                 day2.Audit,
		EndCode:               proxy.EndCode,
		RefusalCode:           proxy.RefusalCode,
		ConsoleType:           proxy.ConsoleType,
		Checker:               checker,
		Dialer:                backend.Dialer{Timeout: cfg.DialTimeout, GreetingTimeout: cfg.ServerGreetingTimeout},
		FailBan:               failban.New(cfg.FailedTokenLimit, cfg.FailedTokenWindow),
		MaxPerInstance:        cfg.MaxSessionsPerInstance,
		Metrics:               counted,
		Log:                   log,
		HandshakeTimeout:      cfg.HandshakeTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		MaxSessionLength:      cfg.MaxSessionLength,
		EnforceSessionTimeout: cfg.EnforceSessionTimeout,
		RFB:                   rfbCfg,
	})
	px := proxy.New(proxy.Options{
		Core:             core,
		Origin:           policy,
		Trust:            trust,
		Web:              pages,
		Log:              log,
		Caps:             caps,
		HandshakeTimeout: cfg.HandshakeTimeout,
		PingInterval:     cfg.PingInterval,
		RevocationGrace:  revocationGrace,
	})

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	var watch *revocation.Status // nil: no revocation watch
	if cli != nil {
		watch = new(revocation.Status)
		watched := make(chan struct{})
		go func() { defer close(watched); revocation.WatchStatus(watchCtx, cli, log, core.Revoke, watch) }()
		// Stop the watch before cli.Close, or it logs a lost watch on exit.
		defer func() { stopWatch(); <-watched }()
	} else {
		log.Warn("etcd_endpoints is empty: revocations will not end live sessions")
	}

	// /metrics and pprof: on the admin listener only, never the public port.
	al, err := admin.Listen(cfg.AdminListen, cfg.AllowPlaintext || cfg.AdminAllowRemote)
	if err != nil {
		return err
	}
	adminSrv := admin.Serve(al, admin.Options{
		Metrics: metrics,
		Ready:   admin.ProxyReadiness(core.Draining, func() bool { return grpcclient.Ready(conn) }, watchHealthy(watch)),
		Log:     log,
	})
	defer adminSrv.Stop() // last: /readyz answers 503 while sessions drain
	if adminListening != nil {
		adminListening(adminSrv.Addr())
	}

	ln, scheme, err := listen(cfg, publicTLS, edge.Options{Caps: caps, Trusted: trust.Trust, Metrics: counted, Log: log})
	if err != nil {
		return err
	}
	srv := px.HTTPServer(log)
	srv.Handler = consoleAuthReadiness(srv.Handler, core, conn)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	live.Serve(core, ln.Addr(), cfg.ShutdownDelay)
	log.Info("novnc-proxy listening", "addr", ln.Addr().String(), "scheme", scheme, "proxy", proxyName,
		"base_url", cfg.BaseURL, "pages", pagesFrom, "consoleauth", cfg.ConsoleAuthAddress, "revocation_watch", len(cfg.EtcdEndpoints) > 0,
		"max_connections", cfg.MaxConnections, "max_connections_per_client", cfg.MaxConnectionsPerClient)
	if listening != nil {
		listening(ln.Addr())
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	// Phase 1: readiness red, still serving: closing the port now would
	// refuse the users a load balancer sends before its next check.
	core.Unready()
	live.SetDraining(time.Now().Add(cfg.ShutdownDelay + cfg.DrainTimeout))
	log.Info("shutting down: readiness red, still accepting", "shutdown_delay", cfg.ShutdownDelay.String(), "sessions", core.Len())
	if cfg.ShutdownDelay > 0 {
		time.Sleep(cfg.ShutdownDelay)
	}
	// Phase 2: stop accepting, let live sessions go on.
	px.Drain()
	log.Info("shutting down: stopped accepting, draining", "sessions", core.Len(), "drain_timeout", cfg.DrainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(drainCtx); err != nil {
		srv.Close()
	}
	if core.Wait(drainCtx) == nil {
		log.Info("shut down: all sessions ended")
		return nil
	}
	// Phase 3: end what is left with 1012; the page reconnects elsewhere.
	log.Info("shutting down: ending sessions", "sessions", core.Len())
	px.EndSessions()
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), endGrace)
	defer cancelGrace()
	if err := core.Wait(graceCtx); err != nil {
		return fmt.Errorf("%d sessions did not end: %w", core.Len(), err)
	}
	log.Info("shut down: sessions ended")
	return nil
}

// consoleAuthReadiness makes /healthz answer 503 "consoleauth unreachable"
// while no consoleauth replica can check a token (a load balancer then
// sends new users to another proxy); draining keeps its own answer.
func consoleAuthReadiness(next http.Handler, core *sessions.Core, conn *grpc.ClientConn) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
			r.Header.Get("Upgrade") == "" && !core.Draining() && tokencheck.WriteUnreachable(w, conn, core.Len()) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// watchHealthy is the revocation watch's readiness check, nil without a
// watch.
func watchHealthy(watch *revocation.Status) func() bool {
	if watch == nil {
		return nil
	}
	return watch.Healthy
}

// webHandler serves the console page, or cfg.Web; it also says which
// folder the browser code comes from.
func webHandler(cfg Config) (http.Handler, string, error) {
	if cfg.Web != "" {
		h, err := web.New(web.Options{WebDir: cfg.Web})
		return h, "web=" + cfg.Web, err
	}
	dir := cfg.NoVNCDir
	if dir == "" {
		var err error
		if dir, err = web.FindNoVNC(noVNCCandidates()); err != nil {
			return nil, "", err
		}
	}
	h, err := web.New(web.Options{NoVNCDir: dir})
	return h, "novnc_core_dir=" + dir, err
}

// listen opens the public port: plain HTTP, TLS only (ssl_only), or both
// on one port as websockify does. scheme says which. Under TLS, an accept
// loop that survives running out of file descriptors and caps connections
// (package edge), answering one over a cap with 503.
func listen(cfg Config, publicTLS *tls.Config, opts edge.Options) (ln net.Listener, scheme string, err error) {
	if ln, err = net.Listen(config.ListenAddr(cfg.Host, cfg.Port, cfg.SourceIsIPv6)); err != nil {
		return nil, "", err
	}
	opts.Refuse = refuseOverCap(publicTLS, cfg.SSLOnly)
	ln = edge.NewListener(ln, opts)
	switch {
	case publicTLS != nil && cfg.SSLOnly:
		return tls.NewListener(ln, publicTLS), "https", nil
	case publicTLS != nil:
		return tlssniff.New(ln, publicTLS, cfg.HandshakeTimeout), "https+http", nil
	}
	return ln, "http", nil
}

// refuseOverCap answers a connection over a cap with HTTP 503, over TLS
// when the client speaks it (a handshake within edge.RefuseTimeout), or
// closes it when ssl_only refuses its plain HTTP.
func refuseOverCap(publicTLS *tls.Config, sslOnly bool) func(net.Conn, error) {
	return func(c net.Conn, why error) {
		if publicTLS != nil {
			conn, isTLS, err := tlssniff.Sniff(c, publicTLS, edge.RefuseTimeout)
			if err != nil || (!isTLS && sslOnly) {
				return
			}
			c = conn
			c.SetDeadline(time.Now().Add(edge.RefuseTimeout))
			if tc, ok := c.(*tls.Conn); ok && tc.Handshake() != nil {
				return
			}
		}
		proxy.WriteOverCap(c, why)
	}
}

// publicTLSConfig is the TLS of the public port (HTTP/1.1 only: WebSocket
// upgrades are HTTP/1.1), nil without a certificate.
func publicTLSConfig(cfg Config, log *slog.Logger) (*tls.Config, error) {
	warnings, err := cfg.public().Check()
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	return cfg.public().Config("http/1.1")
}
