// Command consoleauth mints and checks console tokens (OpenStack Nova's
// nova-consoleauth and the console part of its compute API). Tokens live in
// etcd, so any number of replicas may run. It serves gRPC (default :6090)
// and, through grpc-gateway, Nova-shaped REST (default :6091).
//
// Options come from flags, VNCGATE_* variables and nova.conf-style files
// (--config-file, --config-dir; see pkg/config); `consoleauth -help` lists
// them by section.
//
// `consoleauth keygen NAME ROLE` makes a REST bearer key: it prints the key
// once (give it to the caller) and the line for api_keys_file, which holds
// only the key's SHA-256.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/logging"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "keygen" {
		if err := keygen(os.Stdout, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "consoleauth keygen:", err)
			os.Exit(2)
		}
		return
	}
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

// keygen prints a new bearer key for NAME with ROLE and its api_keys_file
// line, each after a comment line: `grep -v '^#'` leaves the key on the
// first line and the file's line on the second.
func keygen(w io.Writer, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: consoleauth keygen NAME ROLE (ROLE: api, mint, proxy, compute, consoleauth or operator)")
	}
	key, line, err := authn.NewKey(args[0], authn.Role(args[1]))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "# the key of %s (shown once; callers send it as Authorization: Bearer KEY):\n%s\n# its line for api_keys_file:\n%s\n",
		args[0], key, line)
	return err
}
