// Command etcdproc is the child process package testkit/etcd starts: it runs
// package etcdserver with the data directory and addresses given by its
// flags, writes "ready" and a newline to stdout once etcd serves clients,
// and stops etcd and exits when its stdin ends (the parent closed it, or
// died). It exits with status 1 when etcd cannot start.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vncgate/vncgate/testkit/etcdserver"
)

func main() {
	dir := flag.String("dir", "", "data directory")
	client := flag.String("client", "127.0.0.1:0", "client address, host:port")
	peer := flag.String("peer", "127.0.0.1:0", "peer address, host:port")
	cert := flag.String("cert", "", "server certificate: serve clients over TLS")
	key := flag.String("key", "", "server certificate's key")
	clientCA := flag.String("client-ca", "", "require client certificates signed by this CA (--client-cert-auth)")
	bcryptCost := flag.Uint("bcrypt-cost", 0, "bcrypt cost of user passwords (0: etcd's default)")
	name := flag.String("name", "", "member name, with -initial-cluster (empty: a single member)")
	cluster := flag.String("initial-cluster", "", "every member as name=http://peer, comma-separated")
	electionMs := flag.Uint("election-ms", 0, "election timeout in milliseconds (0: etcdserver's default)")
	flag.Parse()
	srv, err := etcdserver.StartConfig(etcdserver.Config{
		Dir: *dir, ClientAddr: *client, PeerAddr: *peer,
		CertFile: *cert, KeyFile: *key, ClientCAFile: *clientCA, BcryptCost: *bcryptCost,
		Name: *name, InitialCluster: *cluster, ElectionMs: *electionMs,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdproc:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	srv.Stop()
}
