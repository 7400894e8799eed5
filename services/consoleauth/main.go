// Command consoleauth mints and checks console tokens (OpenStack Nova's
// nova-consoleauth and the console part of its compute API). Tokens live in
// etcd, so any number of replicas may run. It serves gRPC (default :6090)
// and, through grpc-gateway, Nova-shaped REST (default :6091).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
)

func main() {
	cfg, level, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "consoleauth:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("consoleauth stopped", "error", err)
		os.Exit(1)
	}
}

// parseFlags reads the configuration from args, the environment
// (VNCGATE_*) and an optional file (pkg/config).
func parseFlags(args []string) (server.Config, slog.Level, error) {
	fs := flag.NewFlagSet("consoleauth", flag.ContinueOnError)
	var (
		grpcListen  = fs.String("grpc_listen", "0.0.0.0:6090", "gRPC listen address")
		restListen  = fs.String("rest_listen", "0.0.0.0:6091", "REST (Nova compute API shape) listen address")
		endpoints   = fs.String("etcd_endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
		etcdCert    = fs.String("etcd_cert", "", "client certificate for etcd (PEM)")
		etcdKey     = fs.String("etcd_key", "", "client key for etcd (PEM)")
		etcdCA      = fs.String("etcd_ca", "", "CA that verifies etcd (PEM)")
		etcdTimeout = fs.Duration("etcd_timeout", 5*time.Second, "timeout of every etcd call")
		grpcCert    = fs.String("grpc_cert", "", "certificate of the gRPC server and of calls to compute agents (PEM); plaintext when empty")
		grpcKey     = fs.String("grpc_key", "", "key of grpc_cert (PEM)")
		grpcCA      = fs.String("grpc_ca", "", "CA that verifies gRPC peers (PEM); turns on mTLS")
		restCert    = fs.String("rest_cert", "", "certificate of the REST listener (PEM); plaintext when empty")
		restKey     = fs.String("rest_key", "", "key of rest_cert (PEM)")
		restCA      = fs.String("rest_ca", "", "CA that verifies REST callers' certificates (PEM); turns on mTLS for REST")
		computeTO   = fs.Duration("compute_timeout", 5*time.Second, "timeout of every call to a compute agent")
		tokenTTL    = fs.Int("token_ttl", 600, "seconds a console token is valid")
		noVNCBase   = fs.String("novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html", "public base URL of the noVNC console page")
		xvpBase     = fs.String("xvpvncproxy_base_url", "http://127.0.0.1:6081/console", "public base URL of the XVP VNC proxy")
		types       = fs.String("enabled_console_types", "novnc,xvpvnc", "comma-separated console types served")
		singleUse   = fs.Bool("single_use_tokens", false, "a token connects once: CheckToken consumes it")
		logLevel    = fs.String("log_level", "info", "debug, info, warn or error")
	)
	if err := config.Load(fs, args); err != nil {
		return server.Config{}, 0, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return server.Config{}, 0, fmt.Errorf("log_level: %w", err)
	}
	if *tokenTTL < 1 {
		return server.Config{}, 0, fmt.Errorf("token_ttl %d: want at least 1 second", *tokenTTL)
	}
	return server.Config{
		GRPCListen:          *grpcListen,
		RESTListen:          *restListen,
		EtcdEndpoints:       splitList(*endpoints),
		EtcdTLS:             tlsconfig.Files{Cert: *etcdCert, Key: *etcdKey, CA: *etcdCA},
		EtcdTimeout:         *etcdTimeout,
		GRPCTLS:             tlsconfig.Files{Cert: *grpcCert, Key: *grpcKey, CA: *grpcCA},
		RESTTLS:             tlsconfig.Files{Cert: *restCert, Key: *restKey, CA: *restCA},
		ComputeTimeout:      *computeTO,
		TokenTTL:            time.Duration(*tokenTTL) * time.Second,
		NoVNCBaseURL:        *noVNCBase,
		XVPBaseURL:          *xvpBase,
		EnabledConsoleTypes: splitList(*types),
		SingleUseTokens:     *singleUse,
	}, level, nil
}

// run serves until ctx ends or a listener fails, then shuts down gracefully.
func run(ctx context.Context, cfg server.Config, log *slog.Logger) error {
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	log.Info("consoleauth ready", "grpc", srv.GRPCAddr(), "rest", srv.RESTAddr(),
		"etcd", cfg.EtcdEndpoints, "token_ttl", cfg.TokenTTL.String(), "single_use_tokens", cfg.SingleUseTokens)
	select {
	case <-ctx.Done():
		log.Info("consoleauth shutting down")
	case err = <-srv.Err():
	}
	return errors.Join(err, srv.Shutdown())
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
