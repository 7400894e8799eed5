// Command compute-agent runs on each hypervisor host: it tells consoleauth
// where an instance's VNC server listens (gRPC GetConsole and
// ValidateConsolePort), registers the host and publishes its instances in
// etcd, and revokes console tokens when an instance stops or leaves.
//
// Settings are flags, then VNCGATE_* environment variables, then the file
// named by --config_file (see pkg/config). SIGINT and SIGTERM stop it;
// SIGHUP re-reads the driver's inventory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := loadConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "compute-agent: %v\n", err)
		os.Exit(2)
	}
	log, err := newLogger(cfg.LogLevel, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "compute-agent: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)

	if err := run(ctx, cfg, env{log: log, reload: reload}); err != nil {
		log.Error("compute-agent failed", "err", err)
		stop()
		os.Exit(1)
	}
}
