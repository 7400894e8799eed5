// Command xvp-proxy serves Java VNC clients over the XVP protocol (Nova's
// nova-xvpvncproxy): one HTTP request head "CONNECT /console?token=T
// HTTP/1.1", a "200 OK" answer, then raw RFB relayed to the instance's VNC
// server. Settings come from flags, VNCGATE_* environment variables or a
// config file (pkg/config), under Nova's option names where Nova has one.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/vncgate/vncgate/pkg/config"
)

func main() {
	fs := flag.NewFlagSet("xvp-proxy", flag.ExitOnError)
	cfg := registerFlags(fs)
	if err := config.Load(fs, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "xvp-proxy:", err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "xvp-proxy: log_level:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *cfg, log, nil); err != nil {
		log.Error("xvp-proxy failed", "err", err)
		os.Exit(1)
	}
}
