package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/testlog"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// TestSilentVNCServerRefused: with the default server_greeting_timeout on,
// a VNC server that accepts and never speaks (every connection lost to a
// full accept queue looks so) is given up after 3 connections: the browser
// gets 4502 (VNC server unreachable) and the log says the server never
// spoke.
func TestSilentVNCServerRefused(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	silent := loopback.Serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	host, port := split(t, silent)
	tok := auth.Mint("inst-silent", "novnc", host, port, time.Minute)
	cfg := testConfig(t, auth)
	if cfg.ServerGreetingTimeout <= 0 {
		t.Fatalf("server_greeting_timeout default: got %v, want the wait on", cfg.ServerGreetingTimeout)
	}
	cfg.ServerGreetingTimeout = 300 * time.Millisecond // short: 3 silent connections wait it out
	logs := &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addrs := make(chan net.Addr, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)), func(a net.Addr) { addrs <- a })
	}()
	t.Cleanup(func() { cancel(); <-done })
	var addr string
	select {
	case a := <-addrs:
		addr = a.String()
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not start listening")
	}

	c, _, err := websocket.Dial(context.Background(), "ws://"+addr+"/websockify?token="+tok, pageOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.Unreachable) {
		t.Errorf("silent VNC server: got close %d %q, want %d", ce.Code, ce.Reason, closecode.Unreachable)
	}
	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if !logs.WaitFor(wait, "the VNC server accepted the connection but never spoke (no byte within 300ms, 3 connections)") {
		t.Errorf("log does not name the silent server:\n%s", logs.String())
	}
}

// split is host and port of addr.
func split(t *testing.T, addr string) (string, int32) {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return a.IP.String(), int32(a.Port)
}
