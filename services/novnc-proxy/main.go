// Command novnc-proxy is the browser side of vncgate's console stack: it
// serves the console page and relays each browser WebSocket to the VNC
// server of the console token it carries, after consoleauth said the token
// is good. It replaces Nova's nova-novncproxy and keeps its option names.
//
// Options come from flags, VNCGATE_* variables and nova.conf-style files
// (--config-file, --config-dir; see pkg/config); `novnc-proxy -help` lists
// them by section.
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
		fmt.Fprintln(os.Stderr, "novnc-proxy:", err)
		os.Exit(2)
	}
	log := logging.New(os.Stderr, "novnc-proxy", cfg.Log)
	notes.Log(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("novnc-proxy stopped", "error", err)
		stop()
		os.Exit(1)
	}
}
