// Package etcd gives a test a real etcd server (package etcdserver) running
// in a child process, stopped in t.Cleanup. A child process keeps etcd's
// server code and goroutines out of the test binary (and etcd's server
// module out of the go.mod of every module whose tests use it), and lets a
// test stop etcd and start it again on the same address and data, to see
// how a service lives through an outage.
//
// StartSecure runs etcd as production runs it for vncgate's least-privilege
// roles: TLS only, every client showing a certificate of the server's own
// test CA, whose common name is the client's etcd user once authentication
// is enabled (--client-cert-auth; --bcrypt-cost 4 so user set-up is fast).
// ClientAs and ClientFiles give a test a client or a service's etcd_cert,
// etcd_key and etcd_ca for a user name.
//
// StartCluster runs several members, each in a child process, as
// production runs etcd, so that a test can take the leader or the quorum
// away and give it back (Cluster.Stop, Cluster.Start).
//
// The child is built from this module's source with the go command on first
// use in each test process, into the user's cache directory; the go command
// relinks it only when its source or dependencies changed. The child ends
// when the test process does, even when the test process is killed.
package etcd

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/tlsconfig"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/internal/freeport"
)

// Server is an etcd in a child process. Its methods are safe for
// concurrent use.
type Server struct {
	// Endpoint is the client address, host:port.
	Endpoint string

	dir, peer string
	// In a cluster (StartCluster): the member's name, every member's
	// name=peer URL, and the election timeout.
	name, cluster string
	electionMs    uint
	// With TLS (StartSecure): the CA of server and client certificates,
	// and the server's certificate files.
	ca  *certs.CA
	tls certs.Files

	mu    sync.Mutex
	stdin *os.File    // the child's stdin (write end); nil while stopped
	proc  *os.Process // the child
	done  chan error  // receives the child's exit
}

// Start runs etcd on a free loopback port for t and returns it with a
// client; both are stopped in t.Cleanup.
func Start(t testing.TB) (*Server, *clientv3.Client) {
	t.Helper()
	srv := New(t, "127.0.0.1:0")
	cli, err := etcdclient.New([]string{srv.Endpoint}, tlsconfig.Files{})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli
}

// New runs etcd for t serving clients on addr (host:port; port 0 picks a
// free one), with its data in a directory of t's. It is stopped in
// t.Cleanup.
func New(t testing.TB, addr string) *Server {
	t.Helper()
	return newServer(t, addr, nil)
}

// StartSecure runs etcd for t on a free loopback port, serving TLS only and
// requiring client certificates of its CA (see the package comment).
// Authentication is not enabled yet: the test enables it, as an operator
// would (pkg/etcdclient.Roles).
func StartSecure(t testing.TB) *Server {
	t.Helper()
	return newServer(t, "127.0.0.1:0", certs.TestCA(t))
}

func newServer(t testing.TB, addr string, ca *certs.CA) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir(), ca: ca}
	if ca != nil {
		var err error
		if s.tls, err = ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: "etcd"}, "127.0.0.1", "localhost"); err != nil {
			t.Fatal(err)
		}
	}
	// A port picked free may be taken by another process before etcd binds
	// it (tests run in parallel): then pick again, with a fresh directory.
	for attempt := 1; ; attempt++ {
		var err error
		if s.Endpoint, err = freeport.Resolve(addr); err != nil {
			t.Fatal(err)
		}
		if s.peer, err = freeport.Resolve("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		err = s.start()
		if err == nil {
			break
		}
		if attempt == startAttempts || !pickedPort(addr) {
			t.Fatal(err)
		}
		t.Logf("etcd: %v; trying other ports", err)
		s.dir = t.TempDir()
	}
	t.Cleanup(s.Stop)
	return s
}

// startAttempts bounds the starts on ports picked free.
const startAttempts = 3

// pickedPort reports whether addr leaves the port to be picked (port 0).
func pickedPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

// Stop ends etcd and returns once its process has exited, so its port is
// free. It does nothing on a stopped server.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stdin == nil {
		return
	}
	s.stdin.Close() // the child stops etcd and exits when its stdin ends
	select {
	case <-s.done:
	case <-time.After(time.Minute): // a safety net: etcd stops in well under a second
		s.proc.Kill()
		<-s.done
	}
	s.stdin, s.proc, s.done = nil, nil, nil
}

// Kill ends etcd the way a crash would (SIGKILL: no leadership handed
// over, nothing closed) and returns once its process has exited. Its data
// stays for Restart. It does nothing on a stopped server.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stdin == nil {
		return
	}
	s.proc.Kill()
	<-s.done
	s.stdin.Close()
	s.stdin, s.proc, s.done = nil, nil, nil
}

// Restart stops etcd if it runs and starts it again on the same addresses
// and data.
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

func (s *Server) start() error {
	bin, err := binary()
	if err != nil {
		return fmt.Errorf("build the etcd child process: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The child reads r; this process keeps w, so the child's stdin ends
	// when Stop closes w or when this process dies.
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	args := []string{"-dir", s.dir, "-client", s.Endpoint, "-peer", s.peer}
	if s.ca != nil {
		args = append(args, "-cert", s.tls.Cert, "-key", s.tls.Key, "-client-ca", s.tls.CA, "-bcrypt-cost", "4")
	}
	if s.name != "" {
		args = append(args, "-name", s.name, "-initial-cluster", s.cluster, "-election-ms", fmt.Sprint(s.electionMs))
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin, cmd.Stderr = r, os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		w.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start etcd: %w", err)
	}
	ready, done := make(chan bool, 1), make(chan error, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line == "ready\n"
		done <- cmd.Wait()
	}()
	select {
	case ok := <-ready:
		if !ok {
			w.Close()
			return fmt.Errorf("etcd on %s did not start: %v", s.Endpoint, <-done)
		}
	case <-time.After(time.Minute): // a safety net: etcd starts in well under a second
		cmd.Process.Kill()
		w.Close()
		<-done
		return fmt.Errorf("etcd on %s not ready after a minute", s.Endpoint)
	}
	s.stdin, s.proc, s.done = w, cmd.Process, done
	return nil
}

// ClientFiles issues a client certificate whose common name is user, signed
// by s's CA, into a directory of t's: the etcd_cert, etcd_key and etcd_ca of
// a service that is to reach s as user. s must have been started by
// StartSecure.
func (s *Server) ClientFiles(t testing.TB, user string) tlsconfig.Files {
	t.Helper()
	if s.ca == nil {
		t.Fatal("etcd: ClientFiles needs a server started by StartSecure")
	}
	f, err := s.ca.WriteIdentityFiles(t.TempDir(), certs.Identity{Name: user})
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}
}

// ClientAs returns a client of s (started by StartSecure) that shows a
// certificate naming user, closed in t.Cleanup.
func (s *Server) ClientAs(t testing.TB, user string) *clientv3.Client {
	t.Helper()
	cli, err := etcdclient.New([]string{s.Endpoint}, s.ClientFiles(t, user))
	if err != nil {
		t.Fatalf("etcd client as %s: %v", user, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

var child struct {
	once sync.Once
	path string
	err  error
}

// binary builds the child (package etcdproc) once per process and returns
// its path.
func binary() (string, error) {
	child.once.Do(func() { child.path, child.err = build() })
	return child.path, child.err
}

func build() (string, error) {
	src, err := childSource()
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	// One binary per checkout, so that two checkouts never run each
	// other's child.
	sum := sha256.Sum256([]byte(src))
	dir := filepath.Join(cache, "vncgate-testkit", hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "etcdproc")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = src
	// A work directory beside the binary makes the go command rename the
	// new binary into place, so a concurrent test process never runs a
	// half-written one.
	cmd.Env = append(os.Environ(), "GOTMPDIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %v\n%s", src, err, out)
	}
	return bin, nil
}

// childSource returns the directory of package etcdproc: beside this file,
// or, when the test was built with -trimpath, where the go command finds
// it.
func childSource() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		return filepath.Join(filepath.Dir(file), "internal", "etcdproc"), nil
	}
	out, err := exec.Command("go", "list", "-find", "-f", "{{.Dir}}", "github.com/vncgate/vncgate/testkit/etcd/internal/etcdproc").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go list: %v\n%s", err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}
