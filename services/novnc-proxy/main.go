// Command novnc-proxy is the browser side of vncgate's console stack: it
// serves the console page and relays each browser WebSocket to the VNC
// server of the console token it carries, after consoleauth said the token
// is good. It replaces Nova's nova-novncproxy and keeps its option names.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "novnc-proxy:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("novnc-proxy stopped", "err", err)
		os.Exit(1)
	}
}
