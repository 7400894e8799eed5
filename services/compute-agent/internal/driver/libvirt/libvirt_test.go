package libvirt

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	testlibvirt "github.com/vncgate/vncgate/testkit/libvirt"
	"github.com/vncgate/vncgate/testkit/qemu"
)

// eventWithin is how fast a lifecycle change must reach the watcher.
const eventWithin = 2 * time.Second

func TestParseVNC(t *testing.T) {
	tests := []struct {
		name    string
		xml     string
		want    vncGraphics
		wantErr error
	}{
		{
			name: "live autoport",
			xml: `<domain><devices><graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
				<listen type='address' address='127.0.0.1'/></graphics></devices></domain>`,
			want: vncGraphics{Port: 5901, Listen: "127.0.0.1"},
		},
		{
			name: "listen element only",
			xml:  `<domain><devices><graphics type='vnc' port='5907'><listen type='address' address='10.0.0.5'/></graphics></devices></domain>`,
			want: vncGraphics{Port: 5907, Listen: "10.0.0.5"},
		},
		{
			name: "spice first then vnc",
			xml: `<domain><devices><graphics type='spice' port='5930'/>
				<graphics type='vnc' port='5902' listen='0.0.0.0'/></devices></domain>`,
			want: vncGraphics{Port: 5902, Listen: "0.0.0.0"},
		},
		{
			name:    "autoport not assigned",
			xml:     `<domain><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>`,
			wantErr: driver.ErrNotRunning,
		},
		{
			name:    "no port attribute",
			xml:     `<domain><devices><graphics type='vnc' autoport='yes'/></devices></domain>`,
			wantErr: driver.ErrNotRunning,
		},
		{
			name:    "no graphics",
			xml:     `<domain><devices><serial type='pty'/></devices></domain>`,
			wantErr: driver.ErrNoConsole,
		},
		{
			name:    "spice only",
			xml:     `<domain><devices><graphics type='spice' port='5930'/></devices></domain>`,
			wantErr: driver.ErrNoConsole,
		},
		{
			name:    "unix socket",
			xml:     `<domain><devices><graphics type='vnc' socket='/run/vnc.sock'><listen type='socket' socket='/run/vnc.sock'/></graphics></devices></domain>`,
			wantErr: driver.ErrNoConsole,
		},
		{
			name:    "not xml",
			xml:     `<domain`,
			wantErr: errAny,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVNC(tt.xml)
			if tt.wantErr != nil {
				if err == nil || (tt.wantErr != errAny && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("got %v, %v, want error %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v, want %+v", got, err, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestConsoleHost(t *testing.T) {
	tests := []struct {
		name, configured, listen, want string
	}{
		{"configured wins", "192.0.2.10", "127.0.0.1", "192.0.2.10"},
		{"listen address", "", "10.0.0.5", "10.0.0.5"},
		{"wildcard v4", "", "0.0.0.0", "127.0.0.1"},
		{"wildcard v6", "", "::", "127.0.0.1"},
		{"unset", "", "", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := consoleHost(tt.configured, tt.listen); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestUUID(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{"canonical", "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69", "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69", false},
		{"upper case", "6F1C7F8E-3B8A-4B5E-9F7E-2A1D3C4B5A69", "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69", false},
		{"no dashes", "6f1c7f8e3b8a4b5e9f7e2a1d3c4b5a69", "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69", false},
		{"short", "6f1c7f8e", "", true},
		{"not hex", "zz1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := parseUUID(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && formatUUID(u) != tt.want {
				t.Fatalf("got %q, want %q", formatUUID(u), tt.want)
			}
		})
	}
}

func TestNewRejectsBadURI(t *testing.T) {
	for _, uri := range []string{"::", "no-scheme"} {
		if _, err := New(Config{URI: uri}); err == nil {
			t.Errorf("New(%q): got nil error, want one", uri)
		}
	}
}

// TestLifecycle follows one guest through start, console, destroy and
// undefine against the real libvirtd.
func TestLifecycle(t *testing.T) {
	testlibvirt.Require(t)
	admin := adminConn(t)
	w := newWorld(t, Config{ProxyClientAddress: "192.0.2.10"})
	ctx := context.Background()
	td := defineDomain(t, admin, testlibvirt.VNCAutoport)

	// Defined but stopped: published, and "not running".
	if uuids, err := w.d.Instances(ctx); err != nil || !slices.Contains(uuids, td.UUID) {
		t.Fatalf("Instances: got %v, %v, want it to contain %s", uuids, err, td.UUID)
	}
	if _, err := w.d.Console(ctx, td.UUID); !errors.Is(err, driver.ErrNotRunning) {
		t.Fatalf("Console before start: got %v, want ErrNotRunning", err)
	}

	startDomain(t, admin, td)
	ev, took := w.waitEvent(t, td.UUID, driver.Started, eventWithin)
	t.Logf("started event after %s: %+v", took, ev)

	c, err := w.d.Console(ctx, td.UUID)
	if err != nil {
		t.Fatalf("Console: %v", err)
	}
	wantPort := vncdisplayPort(t, td)
	if c.Host != "192.0.2.10" || c.Port != wantPort || c.Port < 5900 {
		t.Fatalf("Console: got %s:%d, want 192.0.2.10:%d (virsh vncdisplay)", c.Host, c.Port, wantPort)
	}
	readRFBBanner(t, c.Port)

	start := time.Now()
	if err := admin.DomainDestroy(td.dom); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	destroyed := time.Since(start)
	ev, took = w.waitEvent(t, td.UUID, driver.Stopped, eventWithin)
	t.Logf("destroy took %s; stopped event %s after it returned", destroyed, took)
	if ev.Reason != driver.ReasonStopped {
		t.Errorf("stopped reason: got %q, want %q", ev.Reason, driver.ReasonStopped)
	}
	if _, err := w.d.Console(ctx, td.UUID); !errors.Is(err, driver.ErrNotRunning) {
		t.Fatalf("Console after destroy: got %v, want ErrNotRunning", err)
	}

	if err := admin.DomainUndefine(td.dom); err != nil {
		t.Fatalf("undefine: %v", err)
	}
	ev, _ = w.waitEvent(t, td.UUID, driver.Deleted, eventWithin)
	if ev.Reason != driver.ReasonDeleted {
		t.Errorf("undefine reason: got %q, want %q", ev.Reason, driver.ReasonDeleted)
	}
	if _, err := w.d.Console(ctx, td.UUID); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("Console after undefine: got %v, want ErrNotFound", err)
	}
	if uuids, err := w.d.Instances(ctx); err != nil || slices.Contains(uuids, td.UUID) {
		t.Fatalf("Instances after undefine: got %v, %v, want no %s", uuids, err, td.UUID)
	}
}

// TestConsoleErrors checks each way Console refuses, on real domains.
func TestConsoleErrors(t *testing.T) {
	testlibvirt.Require(t)
	admin := adminConn(t)
	d, err := New(Config{}) // no server_proxyclient_address: the listen address
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	noVNC := defineDomain(t, admin, testlibvirt.NoGraphics)
	startDomain(t, admin, noVNC)
	stopped := defineDomain(t, admin, testlibvirt.VNCAutoport)
	running := defineDomain(t, admin, testlibvirt.VNCAutoport)
	startDomain(t, admin, running)

	tests := []struct {
		name     string
		uuid     string
		wantHost string
		wantErr  error
	}{
		{"running with vnc", running.UUID, "127.0.0.1", nil},
		{"running without graphics", noVNC.UUID, "", driver.ErrNoConsole},
		{"defined not started", stopped.UUID, "", driver.ErrNotRunning},
		{"unknown", testlibvirt.NewUUID(t), "", driver.ErrNotFound},
		{"not a uuid", "instance-00000001", "", driver.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := d.Console(context.Background(), tt.uuid)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %+v, %v, want %v", c, err, tt.wantErr)
				}
				return
			}
			if err != nil || c.Host != tt.wantHost || c.Port < 5900 {
				t.Fatalf("got %+v, %v, want host %s and a port >= 5900", c, err, tt.wantHost)
			}
		})
	}
}

// TestConsoleChanged restarts a guest on another VNC port: the watcher
// reports Started and ConsoleChanged, and Console the new port.
func TestConsoleChanged(t *testing.T) {
	testlibvirt.Require(t)
	admin := adminConn(t)
	w := newWorld(t, Config{ProxyClientAddress: "127.0.0.1"})
	ctx := context.Background()

	p1, p2 := qemu.FreeVNCPort(t), qemu.FreeVNCPort(t)
	for p2 == p1 {
		p2 = qemu.FreeVNCPort(t)
	}
	td := defineDomain(t, admin, testlibvirt.VNCAt(p1))
	startDomain(t, admin, td)
	w.waitEvent(t, td.UUID, driver.Started, eventWithin)
	if c, err := w.d.Console(ctx, td.UUID); err != nil || c.Port != int32(p1) {
		t.Fatalf("Console: got %+v, %v, want port %d", c, err, p1)
	}

	if err := admin.DomainDestroy(td.dom); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	w.waitEvent(t, td.UUID, driver.Stopped, eventWithin)
	redefine(t, admin, td, testlibvirt.VNCAt(p2))
	startDomain(t, admin, td)
	w.waitEvent(t, td.UUID, driver.Started, eventWithin)
	ev, _ := w.waitEvent(t, td.UUID, driver.ConsoleChanged, eventWithin)
	if ev.Reason != driver.ReasonConsole {
		t.Errorf("reason: got %q, want %q", ev.Reason, driver.ReasonConsole)
	}
	if c, err := w.d.Console(ctx, td.UUID); err != nil || c.Port != int32(p2) {
		t.Fatalf("Console after restart: got %+v, %v, want port %d", c, err, p2)
	}
}

// TestLibvirtdRestart stops libvirtd under a running driver: calls fail
// with ErrUnavailable meanwhile; afterwards the driver reconnects, the
// watcher resubscribes, reports what changed while libvirtd was away (a
// guest whose QEMU died) and reports new events.
func TestLibvirtdRestart(t *testing.T) {
	testlibvirt.Require(t)
	admin := adminConn(t)
	w := newWorld(t, Config{ProxyClientAddress: "127.0.0.1", MaxBackoff: 300 * time.Millisecond})
	ctx := context.Background()

	alive := defineDomain(t, admin, testlibvirt.VNCAutoport)
	startDomain(t, admin, alive)
	w.waitEvent(t, alive.UUID, driver.Started, eventWithin)
	dies := defineDomain(t, admin, testlibvirt.VNCAutoport)
	startDomain(t, admin, dies)
	w.waitEvent(t, dies.UUID, driver.Started, eventWithin)
	before, err := w.d.Console(ctx, alive.UUID)
	if err != nil {
		t.Fatalf("Console: %v", err)
	}
	qemuPID, err := testlibvirt.ReadPID(filepath.Join("/run/libvirt/qemu", dies.Name+".pid"))
	if err != nil {
		t.Fatalf("qemu pid of %s: %v", dies.Name, err)
	}

	testlibvirt.StopLibvirtd(t)
	if _, err := w.d.Console(ctx, alive.UUID); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Console while libvirtd is down: got %v, want ErrUnavailable", err)
	}
	// A guest dies while nobody watches: only reconciliation can tell.
	if err := syscall.Kill(qemuPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill qemu of %s: %v", dies.Name, err)
	}
	for syscall.Kill(qemuPID, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
	restarted := time.Now()
	if err := testlibvirt.StartLibvirtd(); err != nil {
		t.Fatal(err)
	}
	w.waitSubscribed(t, 15*time.Second)
	t.Logf("watcher resubscribed %s after libvirtd was started", time.Since(restarted))
	w.waitEvent(t, dies.UUID, driver.Stopped, 5*time.Second)

	c, err := w.d.Console(ctx, alive.UUID)
	if err != nil || c != before {
		t.Fatalf("Console after restart: got %+v, %v, want %+v", c, err, before)
	}
	admin = adminConn(t) // the old one died with libvirtd
	if err := admin.DomainDestroy(alive.dom); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	_, took := w.waitEvent(t, alive.UUID, driver.Stopped, eventWithin)
	t.Logf("stopped event %s after destroy, after the restart", took)
}

// TestUnreachable: with no libvirtd behind the URI, calls fail fast with
// ErrUnavailable and the watcher keeps trying without closing its channel.
func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "no-libvirt-sock")
	d, err := New(Config{URI: "qemu:///system?socket=" + sock, MaxBackoff: 200 * time.Millisecond, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx := context.Background()
	for i := range 3 {
		start := time.Now()
		_, err := d.Console(ctx, testlibvirt.NewUUID(t))
		if !errors.Is(err, driver.ErrUnavailable) {
			t.Fatalf("call %d: got %v, want ErrUnavailable", i, err)
		}
		t.Logf("call %d failed after %s", i, time.Since(start))
	}
	if _, err := d.Instances(ctx); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Instances: got %v, want ErrUnavailable", err)
	}

	wctx, cancel := context.WithCancel(ctx)
	events := d.Watch(wctx)
	select {
	case ev, ok := <-events:
		t.Fatalf("got event %+v (open %v), want none", ev, ok)
	case <-time.After(700 * time.Millisecond):
	}
	cancel()
	select {
	case _, ok := <-events:
		if ok {
			t.Fatal("got an event after cancel, want the channel closed")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("watch channel not closed after cancel")
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
