package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/testlog"
)

const rfbVersion = "RFB 003.008\n"

// TestSilentVNCServer: a VNC server connection that never carries a byte
// (as one lost to a full accept queue) is dropped for a new one, and the
// console works; a server that never speaks gets the client a 502 and the
// log says why. Every silent connection is counted and logged.
func TestSilentVNCServer(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	var accepts atomic.Int32
	flaky := loopback.Serve(t, func(c net.Conn) {
		if accepts.Add(1) == 1 {
			io.Copy(io.Discard, c) // silent until the proxy gives up on it
			return
		}
		io.WriteString(c, rfbVersion)
		io.Copy(c, c)
	})
	silent := loopback.Serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	auth.Add("tok-flaky", "xvpvnc", "inst-a", flaky, "")
	auth.Add("tok-silent", "xvpvnc", "inst-b", silent, "")
	cfg := testConfig(t, auth.Addr)
	cfg.ServerGreetingTimeout = 300 * time.Millisecond // short: the silent server's 3 connections wait it out
	cfg.AdminListen = "127.0.0.1:0"
	logs := &testlog.Buffer{}
	addr, metrics := startRunAddrs(t, cfg, slog.New(slog.NewTextHandler(logs, nil)))
	const silentSeries = "vncgate_proxy_vnc_silent_connections_total"

	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := openSession(t, c, "tok-flaky")
	got := make([]byte, len(rfbVersion))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != rfbVersion {
		t.Fatalf("first bytes: got %q (%v), want the server's RFB version", got, err)
	}
	echoOver(t, c, br, "after the greeting")
	if n := accepts.Load(); n != 2 {
		t.Errorf("connections to the VNC server: got %d, want 2 (the silent one, then the one that spoke)", n)
	}
	if got := metricValue(t, metrics, silentSeries); got != 1 {
		t.Errorf("%s: got %v, want 1", silentSeries, got)
	}

	s, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(s, "CONNECT /console?token=tok-silent HTTP/1.1\r\n\r\n")
	status, err := bufio.NewReader(s).ReadString('\n')
	if want := "HTTP/1.1 502 Bad Gateway\r\n"; status != want {
		t.Fatalf("silent server: got %q (%v), want %q", status, err, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !logs.WaitFor(ctx, "the VNC server accepted the connection but never spoke (no byte within 300ms, 3 connections)") {
		t.Errorf("log does not name the silent server:\n%s", logs.String())
	}
	if got := metricValue(t, metrics, silentSeries); got != 4 {
		t.Errorf("%s: got %v, want 4 (1, then the silent server's 3)", silentSeries, got)
	}
	if n := strings.Count(logs.String(), "VNC server sent nothing: connection closed"); n != 4 {
		t.Errorf("log lines of silent connections: got %d, want 4:\n%s", n, logs.String())
	}
}

// TestQEMUBurstThroughProxy: 8 consoles of one real QEMU opened through
// xvp-proxy at once. QEMU's VNC accept queue holds one connection, so
// some of the proxy's connects are completed by SYN cookies and dropped
// (3-4 of 8 without the greeting wait); with the services' default
// server_greeting_timeout every console gets QEMU's RFB version.
func TestQEMUBurstThroughProxy(t *testing.T) {
	port := qemu.StartVNC(t)
	auth := fakeconsoleauth.Start(t)
	vnc := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	const burst = 8
	for i := range burst {
		auth.Add("tok-"+strconv.Itoa(i), "xvpvnc", "inst-qemu", vnc, "")
	}
	cfg := testConfig(t, auth.Addr)
	cfg.ServerGreetingTimeout = backend.DefaultGreetingTimeout
	addr := startRun(t, cfg, slog.New(slog.DiscardHandler))

	start, release := make(chan struct{}), make(chan struct{})
	results := make(chan error, burst)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(release)
	for i := range burst {
		wg.Go(func() {
			<-start
			c, err := openQEMUConsole(addr, "tok-"+strconv.Itoa(i))
			if c != nil {
				defer c.Close()
			}
			if err != nil {
				err = fmt.Errorf("console %d: %w", i, err)
			}
			results <- err
			<-release // all 8 open at once, as 8 users' consoles
		})
	}
	close(start)
	var failed []string
	for range burst {
		if err := <-results; err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d consoles opened at once failed:\n%s", len(failed), burst, strings.Join(failed, "\n"))
	}
}

// openQEMUConsole opens a console through xvp-proxy at addr and requires the
// 200 and the RFB version. The conn is returned open, error or not.
func openQEMUConsole(addr, token string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "CONNECT /console?token="+token+" HTTP/1.1\r\n\r\n")
	want := "HTTP/1.1 200 OK\r\n\r\n" + rfbVersion
	got := make([]byte, len(want))
	if n, err := io.ReadFull(c, got); err != nil || string(got) != want {
		return c, fmt.Errorf("got %q (%v), want the 200 and QEMU's RFB version", got[:n], err)
	}
	return c, nil
}
