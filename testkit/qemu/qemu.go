// Package qemu runs real QEMU VNC servers for tests: a qemu-system-x86_64
// with no machine, no devices and no disk whose only job is to serve VNC on
// 127.0.0.1, stopped in t.Cleanup.
//
// Without QEMU a test fails when CI=true (CI machines must have it: make deps
// installs Debian's qemu-system-x86) and is skipped elsewhere.
package qemu

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Binary is the QEMU program the tests run.
const Binary = "qemu-system-x86_64"

// BasePort is the TCP port of VNC display 0: display N listens on BasePort+N.
const BasePort = 5900

// Port range of FreeVNCPort: far above libvirt's autoport range start (it
// hands out 5900, 5901, … to autoport guests of concurrent tests) and below
// the kernel's ephemeral range (32768 and up on Linux), so that neither an
// outgoing connection nor a listener on port 0 takes the port meanwhile.
const (
	minFreePort = 20000
	maxFreePort = 32000
)

// attempts is how many free displays StartVNC tries: a port found free can
// be taken by another process before QEMU binds it.
const attempts = 5

// readyWithin is how long StartVNC waits for QEMU's VNC server to accept.
const readyWithin = 15 * time.Second

// Installed reports whether QEMU is on PATH. When it is not and CI=true it
// fails t instead: in CI a missing QEMU is a broken machine, never a reason
// to pass.
func Installed(t testing.TB) bool {
	t.Helper()
	if _, err := exec.LookPath(Binary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (CI=true): %v; install Debian package qemu-system-x86 (make deps)", Binary, err)
		}
		return false
	}
	return true
}

// Require returns QEMU's path. When QEMU is missing it fails t when CI=true
// and skips t otherwise.
func Require(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath(Binary)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (CI=true): %v; install Debian package qemu-system-x86 (make deps)", Binary, err)
		}
		t.Skipf("%s not found: %v (make deps installs it)", Binary, err)
	}
	return path
}

// BaseArgs are the arguments of a QEMU with nothing but its monitors and
// displays: no machine, no default devices, no user configuration, no
// window. Each call returns a fresh slice the caller may append to.
func BaseArgs() []string {
	return []string{"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none"}
}

// FreeVNCPort returns a TCP port on 127.0.0.1 that nobody listened on a
// moment ago, BasePort+N for a display N, in [20000, 32000). It suits
// QEMU's -vnc 127.0.0.1:N (N = port-BasePort) and libvirt's
// <graphics type='vnc' port='…'/>. Two calls may return the same port.
func FreeVNCPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		port := minFreePort + int(binary.BigEndian.Uint32(b[:])%(maxFreePort-minFreePort))
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatalf("no free port in [%d, %d) on 127.0.0.1 after 100 tries", minFreePort, maxFreePort)
	return 0
}

// StartVNC runs QEMU (BaseArgs, then -vnc 127.0.0.1:N on a free display N,
// then extraArgs) and returns its VNC port once the server accepts TCP
// connections. QEMU is killed, and waited for, in t.Cleanup. When QEMU exits
// before it accepts (say the port was taken meanwhile) another display is
// tried, up to 5 in all. Without QEMU it fails or skips t as Require does.
func StartVNC(t testing.TB, extraArgs ...string) (port int) {
	t.Helper()
	return StartVNCWith(t, "", extraArgs...)
}

// StartVNCWith is StartVNC with vncOptions appended to the -vnc argument
// after a comma: "password=on", "tls-creds=tls0" (the object itself goes in
// extraArgs), or "" for none.
func StartVNCWith(t testing.TB, vncOptions string, extraArgs ...string) (port int) {
	t.Helper()
	qemu := Require(t)
	for range attempts {
		port := FreeVNCPort(t)
		display := fmt.Sprintf("127.0.0.1:%d", port-BasePort)
		if vncOptions != "" {
			display += "," + vncOptions
		}
		args := append(BaseArgs(), "-vnc", display)
		args = append(args, extraArgs...)
		cmd := exec.Command(qemu, args...)
		var out bytes.Buffer // read only once QEMU has exited
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", qemu, err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		t.Cleanup(stop)
		err := waitAccepting(port, exited)
		if err == nil {
			return port
		}
		stop()
		if !errors.Is(err, errExited) {
			t.Fatalf("qemu %v: %v; output: %s", args, err, out.String())
		}
		t.Logf("qemu on display %d exited before serving VNC (%s); trying another display", port-BasePort, bytes.TrimSpace(out.Bytes()))
	}
	t.Fatalf("could not start qemu with a VNC server on a free display after %d attempts", attempts)
	return 0
}

// StartVeNCrypt runs QEMU serving VNC with VeNCrypt x509, as libvirt's
// vnc_tls=1 does: `-object tls-creds-x509,id=tls0,dir=DIR,endpoint=server,
// verify-peer=…` and `-vnc 127.0.0.1:N,tls-creds=tls0`. dir must hold
// exactly ca-cert.pem, server-cert.pem and server-key.pem (see
// certs.CA.WriteQEMUDir); with verifyPeer (libvirt's vnc_tls_x509_verify=1)
// QEMU requires a client certificate signed by that CA, and closes the
// connection right after the TLS handshake when there is none. It returns
// the VNC port; QEMU is stopped in t.Cleanup.
func StartVeNCrypt(t testing.TB, dir string, verifyPeer bool, extraArgs ...string) (port int) {
	t.Helper()
	verify := "no"
	if verifyPeer {
		verify = "yes"
	}
	// QEMU's option syntax escapes a comma in a value by doubling it.
	object := "tls-creds-x509,id=tls0,dir=" + strings.ReplaceAll(dir, ",", ",,") + ",endpoint=server,verify-peer=" + verify
	return StartVNCWith(t, "tls-creds=tls0", append([]string{"-object", object}, extraArgs...)...)
}

var errExited = errors.New("qemu exited")

// waitAccepting waits until 127.0.0.1:port accepts a TCP connection, QEMU
// exits, or readyWithin passes.
func waitAccepting(port int, exited <-chan struct{}) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(readyWithin)
	for {
		select {
		case <-exited:
			return errExited
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("VNC server on %s not accepting after %s", addr, readyWithin)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
