// Command vncgatectl is the operator's CLI of a vncgate fleet: it lists and
// ends live console sessions across every proxy, revokes an instance's
// tokens, drains a proxy and shows the fleet's status, all through
// consoleauth's gRPC API (OperationsService) with an operator certificate.
// consoleauth answers from etcd, so vncgatectl never talks to a proxy.
//
//	vncgatectl --config ~/.config/vncgate/vncgatectl.conf status
//	vncgatectl sessions list --instance 6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b -o json
//	vncgatectl sessions kill 7c9e… --reason admin
//	vncgatectl tokens revoke 6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b
//	vncgatectl proxy drain novnc-proxy-2 --deadline 30s
//
// Settings (consoleauth addresses, CA, certificate, key) come from flags,
// VNCGATECTL_* variables or a --config file, in that order; exit codes are
// listed in exitcodes.go and README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}
