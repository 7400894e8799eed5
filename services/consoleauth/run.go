package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
)

// run serves until ctx ends or a listener fails, then shuts down
// gracefully: /healthz turns red, listeners close, in-flight calls finish.
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if !cfg.VNCEnabled {
		log.Warn("[vnc] enabled is false: every console request is answered 501")
	}
	srv, err := server.Start(ctx, cfg.Config, log)
	if err != nil {
		return err
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
