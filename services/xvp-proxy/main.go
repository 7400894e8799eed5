// Command xvp-proxy serves Java VNC clients over the XVP protocol (Nova's
// nova-xvpvncproxy): one HTTP request head "CONNECT /console?token=T
// HTTP/1.1", a "200 OK" answer, then raw RFB relayed to the instance's VNC
// server.
//
// Options come from flags, VNCGATE_* variables and nova.conf-style files
// (--config-file, --config-dir; see pkg/config); `xvp-proxy -help` lists
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
		fmt.Fprintln(os.Stderr, "xvp-proxy:", err)
		os.Exit(2)
	}
	log := logging.New(os.Stderr, "xvp-proxy", cfg.Log)
	notes.Log(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("xvp-proxy stopped", "error", err)
		stop()
		os.Exit(1)
	}
}
