package qmp

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"github.com/vncgate/vncgate/testkit/qemu"
)

func TestParseSockets(t *testing.T) {
	const (
		a = "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69"
		b = "0b7e2a4c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
	)
	tests := []struct {
		name    string
		in      string
		want    []Instance
		wantErr bool
	}{
		{"empty", "", nil, false},
		{"one", a + "=/run/qemu/a.qmp", []Instance{{a, "/run/qemu/a.qmp"}}, false},
		{"two with spaces and upper case", " " + a + " = /run/a.qmp , 0B7E2A4C-1D2E-4F5A-8B9C-0D1E2F3A4B5C=/run/b.qmp,",
			[]Instance{{a, "/run/a.qmp"}, {b, "/run/b.qmp"}}, false},
		{"no equals", a, nil, true},
		{"not a uuid", "instance-1=/run/a.qmp", nil, true},
		{"relative path", a + "=a.qmp", nil, true},
		{"empty path", a + "=", nil, true},
		{"duplicate", a + "=/a," + a + "=/b", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSockets(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestConsole asks real QEMU processes for their console.
func TestConsole(t *testing.T) {
	// QEMU serves one QMP client at a time: each driver gets its own.
	withVNC := startQEMU(t, "", qemuOpts{vnc: true})
	withVNC2 := startQEMU(t, "", qemuOpts{vnc: true})
	noVNC := startQEMU(t, "", qemuOpts{})
	var (
		vncID, noVNCID = newUUID(t), newUUID(t)
		goneID         = newUUID(t)
		goneSock       = filepath.Join(t.TempDir(), "gone.sock")
	)
	instances := []Instance{{vncID, withVNC.sock}, {noVNCID, noVNC.sock}, {goneID, goneSock}}
	withAddress := newDriver(t, "192.0.2.10", instances...)
	listenHost := newDriver(t, "", Instance{vncID, withVNC2.sock})

	tests := []struct {
		name    string
		d       *Driver
		uuid    string
		want    driver.Console
		wantErr error
	}{
		{"vnc with server_proxyclient_address", withAddress, vncID, driver.Console{Host: "192.0.2.10", Port: withVNC.port}, nil},
		{"vnc with the listen host", listenHost, vncID, driver.Console{Host: "127.0.0.1", Port: withVNC2.port}, nil},
		{"upper-case uuid", withAddress, toUpper(vncID), driver.Console{Host: "192.0.2.10", Port: withVNC.port}, nil},
		{"qemu without vnc", withAddress, noVNCID, driver.Console{}, driver.ErrNoConsole},
		{"socket missing", withAddress, goneID, driver.Console{}, driver.ErrNotRunning},
		{"not configured", withAddress, newUUID(t), driver.Console{}, driver.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.d.Console(context.Background(), tt.uuid)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %+v, %v, want %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v, want %+v", got, err, tt.want)
			}
		})
	}

	uuids, err := withAddress.Instances(context.Background())
	want := []string{vncID, noVNCID, goneID}
	slices.Sort(want)
	if err != nil || !slices.Equal(uuids, want) {
		t.Fatalf("Instances: got %v, %v, want %v", uuids, err, want)
	}
}

func toUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'f' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// TestStopped ends QEMU in different ways: each is reported as Stopped
// within 2s, and the console is then "not running".
func TestStopped(t *testing.T) {
	tests := []struct {
		name string
		stop func(t *testing.T, p *qemuProc)
	}{
		{"SIGTERM (SHUTDOWN event)", func(t *testing.T, p *qemuProc) { p.kill(syscall.SIGTERM) }},
		{"SIGKILL (socket EOF)", func(t *testing.T, p *qemuProc) { p.kill(syscall.SIGKILL) }},
		{"quit on another monitor", func(t *testing.T, p *qemuProc) { p.control(t, "quit") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startQEMU(t, "", qemuOpts{vnc: true, control: true})
			id := newUUID(t)
			d := newDriver(t, "127.0.0.1", Instance{id, p.sock})
			events := watch(t, d)
			if c, err := d.Console(context.Background(), id); err != nil || c.Port != p.port {
				t.Fatalf("Console: got %+v, %v, want port %d", c, err, p.port)
			}
			start := time.Now()
			tt.stop(t, p)
			ev, _ := waitEvent(t, events, id, driver.Stopped, eventWithin)
			t.Logf("stopped event %s after the stop began", time.Since(start))
			if ev.Reason != driver.ReasonStopped {
				t.Errorf("reason: got %q, want %q", ev.Reason, driver.ReasonStopped)
			}
			if _, err := d.Console(context.Background(), id); !errors.Is(err, driver.ErrNotRunning) {
				t.Fatalf("Console after stop: got %v, want ErrNotRunning", err)
			}
			noEvent(t, events, 200*time.Millisecond) // one Stopped, not one per signal
		})
	}
}

// TestPausedKeepsConsole: a paused guest still has a console and no event
// is reported.
func TestPausedKeepsConsole(t *testing.T) {
	p := startQEMU(t, "", qemuOpts{vnc: true, control: true})
	id := newUUID(t)
	d := newDriver(t, "127.0.0.1", Instance{id, p.sock})
	events := watch(t, d)
	if _, err := d.Console(context.Background(), id); err != nil {
		t.Fatalf("Console: %v", err)
	}
	p.control(t, "stop")
	if c, err := d.Console(context.Background(), id); err != nil || c.Port != p.port {
		t.Fatalf("Console while paused: got %+v, %v, want port %d", c, err, p.port)
	}
	p.control(t, "cont")
	noEvent(t, events, 300*time.Millisecond)
}

// TestRestartOnAnotherPort: QEMU comes back on the same monitor socket with
// another VNC port: Started and ConsoleChanged are reported, and Console
// answers the new port right away.
func TestRestartOnAnotherPort(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "q.sock")
	first := startQEMU(t, sock, qemuOpts{vnc: true})
	id := newUUID(t)
	d := newDriver(t, "127.0.0.1", Instance{id, sock})
	events := watch(t, d)
	if c, err := d.Console(context.Background(), id); err != nil || c.Port != first.port {
		t.Fatalf("Console: got %+v, %v, want port %d", c, err, first.port)
	}
	first.kill(syscall.SIGKILL)
	waitEvent(t, events, id, driver.Stopped, eventWithin)

	port := qemu.FreeVNCPort(t)
	for port == int(first.port) {
		port = qemu.FreeVNCPort(t)
	}
	second := startQEMU(t, sock, qemuOpts{vnc: true, port: port})
	// Console connects by itself, without waiting for the monitor's backoff.
	if c, err := d.Console(context.Background(), id); err != nil || c.Port != second.port {
		t.Fatalf("Console after restart: got %+v, %v, want port %d", c, err, second.port)
	}
	waitEvent(t, events, id, driver.Started, eventWithin)
	ev, _ := waitEvent(t, events, id, driver.ConsoleChanged, eventWithin)
	if ev.Reason != driver.ReasonConsole {
		t.Errorf("reason: got %q, want %q", ev.Reason, driver.ReasonConsole)
	}
}

// TestStartsAfterAgent: an instance whose QEMU starts after the driver is
// reported Started once its monitor appears.
func TestStartsAfterAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "q.sock")
	id := newUUID(t)
	d := newDriver(t, "127.0.0.1", Instance{id, sock})
	events := watch(t, d)
	if _, err := d.Console(context.Background(), id); !errors.Is(err, driver.ErrNotRunning) {
		t.Fatalf("Console before start: got %v, want ErrNotRunning", err)
	}
	p := startQEMU(t, sock, qemuOpts{vnc: true})
	waitEvent(t, events, id, driver.Started, eventWithin)
	if c, err := d.Console(context.Background(), id); err != nil || c.Port != p.port {
		t.Fatalf("Console: got %+v, %v, want port %d", c, err, p.port)
	}
}

// TestClose: closing the driver reports nothing and later calls fail with
// ErrUnavailable; QEMU keeps running.
func TestClose(t *testing.T) {
	p := startQEMU(t, "", qemuOpts{vnc: true})
	id := newUUID(t)
	d := newDriver(t, "127.0.0.1", Instance{id, p.sock})
	events := watch(t, d)
	if _, err := d.Console(context.Background(), id); err != nil {
		t.Fatalf("Console: %v", err)
	}
	d.Close()
	noEvent(t, events, 300*time.Millisecond)
	if _, err := d.Console(context.Background(), id); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Console after Close: got %v, want ErrUnavailable", err)
	}
	select {
	case <-p.exited:
		t.Fatal("qemu exited when the driver closed")
	default:
	}
}
