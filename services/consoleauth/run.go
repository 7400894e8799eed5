package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
)

// run serves until ctx ends or a listener fails, then shuts down
// gracefully: /healthz turns red, listeners close, in-flight calls finish.
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	return runAdmin(ctx, cfg, log, nil)
}

// runAdmin is run telling adminReady, if not nil, the admin listener's
// address (nil when admin_listen is empty) once consoleauth serves.
func runAdmin(ctx context.Context, cfg Config, log *slog.Logger, adminReady func(net.Addr)) error {
	if !cfg.VNCEnabled {
		log.Warn("[vnc] enabled is false: every console request is answered 501")
	}
	if err := admin.CheckAddr(cfg.AdminListen, cfg.AllowPlaintext || cfg.AdminAllowRemote); err != nil {
		return err
	}
	tracing, err := grpcserver.StartTracing(ctx, cfg.Tracing, "consoleauth")
	if err != nil {
		return err
	}
	// After the servers stop (deferred calls run last in, first out):
	// their last spans are exported.
	defer shutdownTracing(tracing, log)
	cfg.Config.Tracing = tracing
	srv, err := server.Start(ctx, cfg.Config, log)
	if err != nil {
		return err
	}
	adminL, err := admin.Listen(cfg.AdminListen, cfg.AllowPlaintext || cfg.AdminAllowRemote)
	if err != nil {
		return errors.Join(err, srv.Shutdown())
	}
	// Stopped after srv.Shutdown: /readyz says "shutting down" meanwhile.
	adminSrv := admin.Serve(adminL, admin.Options{Metrics: srv.Metrics(), Ready: readiness(srv), Log: log})
	defer adminSrv.Stop()
	if adminReady != nil {
		adminReady(adminSrv.Addr())
	}
	log.Info("consoleauth ready", "grpc", srv.GRPCAddr(), "rest", srv.RESTAddr(), "endpoints", cfg.EtcdEndpoints,
		"token_ttl", cfg.TokenTTL.String(), "single_use_tokens", cfg.SingleUseTokens, "console_types", cfg.EnabledConsoleTypes)
	select {
	case <-ctx.Done():
		log.Info("consoleauth shutting down")
	case err = <-srv.Err():
	}
	return errors.Join(err, srv.Shutdown())
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

// readiness is /readyz: consoleauth can serve while etcd answers and it is
// not shutting down.
func readiness(srv *server.Server) []admin.Check {
	return []admin.Check{
		{Name: "draining", Check: func() error {
			if srv.Draining() {
				return errors.New("shutting down")
			}
			return nil
		}},
		{Name: "etcd", Check: func() error {
			if !srv.EtcdHealthy() {
				return errors.New("etcd unreachable or without quorum")
			}
			return nil
		}},
	}
}
