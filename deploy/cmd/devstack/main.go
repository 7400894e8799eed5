// Command devstack runs the whole of vncgate on this machine (`make run`):
// embedded etcd, the demo VM's VNC server, consoleauth, one compute agent
// and both proxies on DESIGN.md's default ports, then prints how to open the
// demo console. Ctrl-C stops everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

func main() {
	bin := flag.String("bin", "bin", "folder of the service binaries (make build)")
	host := flag.String("host", "127.0.0.1", "address every service listens on")
	dir := flag.String("dir", "", "folder for etcd data and logs (default: a new temporary folder, removed on exit)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *bin, *host, *dir, devstack.DefaultPorts()); err != nil {
		slog.Error("devstack", "err", err)
		os.Exit(1)
	}
}

// run starts the stack, prints the banner to out and waits for ctx.
func run(ctx context.Context, out io.Writer, bin, host, dir string, ports devstack.Ports) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "vncgate-devstack-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	// Off loopback the embedded etcd, the REST API and the proxies listen in
	// plaintext, which the services refuse unless told: a dev stack says so.
	plaintext := !tlsconfig.IsLoopback(host)
	if plaintext {
		slog.Warn("devstack: listening in plaintext off loopback (allow_plaintext on every service); use it on a trusted network only", "host", host)
	}
	w, err := devstack.Start(ctx, devstack.Options{
		Bin: bin, Dir: dir, Host: host, Ports: ports, Logs: os.Stderr, AllowPlaintext: plaintext,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(os.Stderr, "devstack: stopping")
		if err := w.Stop(); err != nil {
			slog.Error("devstack stop", "err", err)
		}
	}()

	uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	novnc, err := w.ConsoleURL(uctx, devstack.DemoUUID, "novnc")
	var xvp string
	if err == nil {
		xvp, err = w.ConsoleURL(uctx, devstack.DemoUUID, "xvpvnc")
	}
	cancel()
	if err != nil {
		return err
	}
	printBanner(out, w, novnc, xvp)
	<-ctx.Done()
	return nil
}

func printBanner(out io.Writer, w *devstack.World, novnc, xvp string) {
	fmt.Fprintf(out, `
vncgate is running (etcd %s, data in %s).

  demo instance   %s
  ask for a URL   curl -s -X POST %s/v2.1/servers/%s/remote-consoles \
                    -H 'Authorization: Bearer %s' \
                    -H 'Content-Type: application/json' \
                    -d '{"remote_console": {"protocol": "vnc", "type": "novnc"}}'
  console (open in a browser; valid for the token TTL, 600 s by default)
                  %s
  Java/XVP client %s
  OpenAPI         %s/openapi.json
  credentials     API key (role api) above, its SHA-256 in %s;
                  each service's mTLS certificate (CA, cert, key) in %s

Ctrl-C stops everything.
`, w.Etcd.Endpoint, w.Dir, devstack.DemoUUID, w.RESTURL(), devstack.DemoUUID, w.APIKey, novnc, xvp, w.RESTURL(),
		w.APIKeysFile, filepath.Join(w.Dir, "tls", "SERVICE"))
}
