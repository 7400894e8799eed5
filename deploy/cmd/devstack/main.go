// Command devstack runs the whole of vncgate on this machine (`make run`):
// embedded etcd, the demo VM's VNC server, consoleauth, one compute agent
// and both proxies on DESIGN.md's default ports, then prints how to open the
// demo console. Ctrl-C stops everything.
//
// With -etcd-members 3 -replicas 2 -lb it runs the world production runs
// instead: a 3-member etcd cluster (a process per member), two replicas of
// consoleauth and of each proxy, and HAProxy on the default ports in front
// of the REST API and both proxies.
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
	"strings"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

func main() {
	bin := flag.String("bin", "bin", "folder of the service binaries (make build)")
	host := flag.String("host", "127.0.0.1", "address every service listens on")
	dir := flag.String("dir", "", "folder for etcd data and logs (default: a new temporary folder, removed on exit)")
	members := flag.Int("etcd-members", 1, "etcd cluster size: 1 runs one embedded member, more a process per member")
	replicas := flag.Int("replicas", 1, "processes of consoleauth, novnc-proxy and xvp-proxy each")
	lb := flag.Bool("lb", false, "HAProxy (Debian package haproxy) on the default ports in front of the REST API and both proxies")
	flag.Parse()
	if *members < 1 || *members > 7 || *replicas < 1 || *replicas > 16 {
		fmt.Fprintln(os.Stderr, "devstack: want 1 ≤ -etcd-members ≤ 7 and 1 ≤ -replicas ≤ 16")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := devstack.Options{Bin: *bin, Host: *host, Dir: *dir, Ports: devstack.DefaultPorts(),
		EtcdMembers: *members, Replicas: *replicas, LB: *lb}
	if err := run(ctx, os.Stdout, opts); err != nil {
		slog.Error("devstack", "err", err)
		os.Exit(1)
	}
}

// run starts the stack of opts (Bin, Host, Dir, Ports and the world's
// shape), prints the banner to out and waits for ctx.
func run(ctx context.Context, out io.Writer, opts devstack.Options) error {
	dir, host := opts.Dir, opts.Host
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
	opts.Dir, opts.Logs, opts.AllowPlaintext = dir, os.Stderr, plaintext
	w, err := devstack.Start(ctx, opts)
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
	ctlConfig, err := w.OperatorConfig()
	if err != nil {
		return err
	}
	printBanner(out, w, novnc, xvp, w.VNCGateCtlCommand(ctlConfig, "status"))
	<-ctx.Done()
	return nil
}

func printBanner(out io.Writer, w *devstack.World, novnc, xvp, operate string) {
	fmt.Fprintf(out, `
vncgate is running (etcd %s, data in %s).
%s
  demo instance   %s
  ask for a URL   curl -s -X POST %s/v2.1/servers/%s/remote-consoles \
                    -H 'Authorization: Bearer %s' \
                    -H 'Content-Type: application/json' \
                    -d '{"remote_console": {"protocol": "vnc", "type": "novnc"}}'
  operate         %s
  console (open in a browser; valid for the token TTL, 600 s by default)
                  %s
  Java/XVP client %s
  OpenAPI         %s/openapi.json
  credentials     API key (role api) above, its SHA-256 in %s;
                  each service's mTLS certificate (CA, cert, key) in %s

Ctrl-C stops everything.
`, strings.Join(w.EtcdEndpoints, ","), w.Dir, shape(w), devstack.DemoUUID, w.RESTURL(), devstack.DemoUUID, w.APIKey, operate, novnc, xvp, w.RESTURL(),
		w.APIKeysFile, filepath.Join(w.Dir, "tls", "SERVICE"))
}

// shape is the banner's lines on a world with replicas: every process, its
// ports and log, and HAProxy.
func shape(w *devstack.World) string {
	if w.Replicas <= 1 && w.EtcdCluster == nil && w.HAProxy == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n")
	for _, p := range w.Processes("") {
		fmt.Fprintf(&b, "  %-16s log %s\n", p.Name, w.LogPath(p.Name))
	}
	if w.HAProxy != nil {
		fmt.Fprintf(&b, "  %-16s in front of the REST API, novnc-proxy and xvp-proxy; log %s\n", "haproxy", w.LogPath("haproxy"))
	}
	return b.String()
}
