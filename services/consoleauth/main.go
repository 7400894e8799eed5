// Command consoleauth mints and checks console tokens (OpenStack Nova's
// nova-consoleauth and the console part of its compute API). Tokens live in
// etcd, so any number of replicas may run. It serves gRPC (default :6090)
// and, through grpc-gateway, Nova-shaped REST (default :6091).
//
// Options come from flags, VNCGATE_* variables and nova.conf-style files
// (--config-file, --config-dir; see pkg/config); `consoleauth -help` lists
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
		fmt.Fprintln(os.Stderr, "consoleauth:", err)
		os.Exit(2)
	}
	log := logging.New(os.Stderr, "consoleauth", cfg.Log)
	notes.Log(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("consoleauth stopped", "error", err)
		stop()
		os.Exit(1)
	}
}
