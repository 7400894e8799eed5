package audit_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/audit"
)

func event(session string) audit.Event {
	return audit.Event{Event: audit.SessionEnd, Session: session, RequestID: session, Instance: "i1", ConsoleType: "novnc",
		Proxy: "p1", Client: "192.0.2.1", MintedBy: "alice", TokenHash: "abcd1234", Started: time.Now().Add(-time.Second),
		DurationSeconds: 1, BytesToClient: 10, BytesToServer: 2, Reason: "client_closed", EndedBy: "client"}
}

func lines(t *testing.T, path string) []audit.Event {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Event
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var e audit.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, e)
	}
	return out
}

// TestFileLogAndReopen: each event is one JSON line in the file and one
// log line marked audit=true; after logrotate moves the file, Reopen
// starts a new one.
func TestFileLogAndReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	var logged bytes.Buffer
	l, err := audit.Open(audit.Options{File: path, Log: slog.New(slog.NewJSONHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l.Write(event("s1"))
	if err := l.Close(); err != nil { // flushes
		t.Fatal(err)
	}
	got := lines(t, path)
	if len(got) != 1 || got[0].Session != "s1" || got[0].MintedBy != "alice" || got[0].Time.IsZero() {
		t.Fatalf("file: got %+v", got)
	}
	var rec map[string]any
	if err := json.Unmarshal(logged.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["msg"] != "audit" || rec["audit"] != true || rec["session"] != "s1" || rec["bytes_to_client"] != 10.0 {
		t.Errorf("log line: got %v", rec)
	}
	l.Write(event("after-close")) // log only, never a panic

	l, err = audit.Open(audit.Options{File: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Write(event("s2")) // may land in the moved file or the new one
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Write(event("s3"))
	l.Close()
	if got := lines(t, path); len(got) == 0 || got[len(got)-1].Session != "s3" {
		t.Errorf("new file after reopen: got %+v, want s3 last", got)
	}
	if got := lines(t, path+".1"); len(got) < 1 || got[0].Session != "s1" {
		t.Errorf("rotated file: got %+v", got)
	}
}

// TestSyslog: events reach a syslog server over UDP as the JSON line.
func TestSyslog(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	l, err := audit.Open(audit.Options{Syslog: "udp://" + pc.LocalAddr().String(), Tag: "novnc-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Write(event("s1"))
	pc.SetReadDeadline(time.Now().Add(10 * time.Second)) // bounds a hang
	buf := make([]byte, 8192)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	msg := string(buf[:n])
	// <facility auth (4) * 8 + info (6)> = <38>
	if !strings.HasPrefix(msg, "<38>") || !strings.Contains(msg, "novnc-proxy") || !strings.Contains(msg, `"session":"s1"`) {
		t.Errorf("syslog message: got %q", msg)
	}
}

// TestNeverBlocks: a syslog server that does not read (TCP, never
// accepted past its backlog) does not hold Write up; events stay in the log.
func TestNeverBlocks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accept and never read
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(time.Minute)
		}
	}()
	var logged bytes.Buffer
	l, err := audit.Open(audit.Options{Syslog: "tcp://" + ln.Addr().String(), Log: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	big := event("s")
	big.Message = strings.Repeat("x", 4000) // bounded to 512 in the event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 4 * audit.QueueSize {
			l.Write(big)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Write blocked on a syslog server that does not read")
	}
	if !strings.Contains(logged.String(), "audit queue full") {
		t.Error("no warning about dropped events")
	}
	if strings.Contains(logged.String(), strings.Repeat("x", 513)) {
		t.Error("message not bounded")
	}
	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close hung on a syslog server that does not read")
	}
}

func TestCheckSyslog(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"local", true}, {"127.0.0.1:514", true}, {"udp://[::1]:514", true}, {"tcp://siem:6514", true},
		{"siem", false}, {"http://siem:514", false}, {"", false},
	} {
		if err := audit.CheckSyslog(tt.addr); (err == nil) != tt.ok {
			t.Errorf("CheckSyslog(%q): got %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
	if _, err := audit.Open(audit.Options{File: filepath.Join(t.TempDir(), "no", "such", "dir")}); err == nil {
		t.Error("Open with a file in a missing directory: got nil error")
	}
}
