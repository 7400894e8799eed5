// Command etcd-roles applies vncgate's least-privilege etcd plan
// (pkg/etcdclient.Roles) to an etcd cluster that authenticates clients by
// certificate: roles consoleauth, proxy, proxy-P per proxy P (its own
// announcement, live sessions, kills and drain; P is both the CN of the
// proxy's etcd certificate and its proxy_name) and compute-H per compute
// host H, users without passwords named as the services' certificates'
// common names, a root user, and then `auth enable`. Run it again with more -hosts
// to add compute hosts (once auth is on, with a certificate whose CN is
// root). With -print it writes the same plan as etcdctl commands instead.
//
//	etcd-roles -endpoints https://etcd1:2379 -cacert ca.pem -cert root.pem -key root-key.pem -hosts cn1,cn2
//	etcd-roles -print -hosts cn1,cn2 > etcd-roles.sh
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "etcd-roles:", err)
		}
		os.Exit(2)
	}
}

// run parses args, then applies the plan (or prints it to out).
func run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("etcd-roles", flag.ContinueOnError)
	fs.SetOutput(errOut)
	endpoints := fs.String("endpoints", "", "etcd endpoints, comma-separated (https://host:2379)")
	caFile := fs.String("cacert", "", "CA of etcd's server certificate")
	certFile := fs.String("cert", "", "client certificate of the administrator (CN=root once auth is on)")
	keyFile := fs.String("key", "", "its key")
	hosts := fs.String("hosts", "", "compute hosts, comma-separated: each gets the user H (CN of its agent's certificate) and the role compute-H")
	consoleauth := fs.String("consoleauth-user", "consoleauth", "CN of consoleauth's etcd client certificate")
	proxies := fs.String("proxy-users", "novnc-proxy,xvp-proxy", "CNs of the proxies' etcd client certificates, comma-separated; each is also that proxy's proxy_name (one per proxy process)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole run")
	printOnly := fs.Bool("print", false, "print the plan as etcdctl commands instead of applying it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	plan := etcdclient.Roles{
		ConsoleAuthUser: *consoleauth,
		ProxyUsers:      split(*proxies),
		ComputeHosts:    split(*hosts),
	}
	if *printOnly {
		script, err := plan.Script()
		if err != nil {
			return err
		}
		_, err = io.WriteString(out, script)
		return err
	}
	if *endpoints == "" {
		return errors.New("-endpoints is required (or -print)")
	}
	cli, err := etcdclient.New(split(*endpoints), tlsconfig.Files{Cert: *certFile, Key: *keyFile, CA: *caFile})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := plan.Apply(ctx, cli); err != nil {
		return err
	}
	fmt.Fprintf(out, "etcd roles applied: consoleauth (%s), proxy (%s), %d compute hosts; auth enabled\n",
		plan.WithDefaults().ConsoleAuthUser, strings.Join(plan.WithDefaults().ProxyUsers, ", "), len(plan.ComputeHosts))
	return nil
}

// split splits a comma-separated list, dropping spaces and empty items.
func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
