// Command compute-agent runs on each hypervisor host: it tells consoleauth
// where an instance's VNC server listens (gRPC GetConsole and
// ValidateConsolePort), registers the host and publishes its instances in
// etcd, and revokes console tokens when an instance stops or leaves.
//
// Options come from flags, VNCGATE_* variables and nova.conf-style files
// (--config-file, --config-dir; see pkg/config); `compute-agent -help`
// lists them by section. SIGINT and SIGTERM stop it; SIGHUP re-reads the
// driver's inventory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/vncgate/vncgate/pkg/logging"
)

func main() {
	cfg, notes, err := loadConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "compute-agent:", err)
		os.Exit(2)
	}
	log := logging.New(os.Stderr, "compute-agent", cfg.Log)
	notes.Log(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	if err := run(ctx, cfg, env{log: log, reload: reload}); err != nil {
		log.Error("compute-agent stopped", "error", err)
		stop()
		os.Exit(1)
	}
}
