package qmp

// Fixtures: real qemu-system-x86_64 processes (TCG, -machine none, no
// disk) with a QMP socket and, when asked, a VNC server on 127.0.0.1.

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"github.com/vncgate/vncgate/testkit/qemu"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// eventWithin is how fast a lifecycle change must reach the watcher.
const eventWithin = 2 * time.Second

type qemuOpts struct {
	vnc bool
	// port, when set with vnc, is the VNC port to use (5900 + display).
	port int
	// control adds a second QMP monitor for the test itself.
	control bool
}

type qemuProc struct {
	cmd     *exec.Cmd
	sock    string // the driver's monitor
	ctlSock string // the test's monitor (opts.control)
	port    int32  // VNC port, 0 without VNC
	exited  chan struct{}
}

func needQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath(qemu.Binary)
	if err != nil {
		t.Fatalf("the qmp tests need %s (apt-get install qemu-system-x86): %v", qemu.Binary, err)
	}
	return p
}

// startQEMU starts QEMU with its QMP socket at sock (a fresh path when
// empty) and stops it when the test ends.
func startQEMU(t *testing.T, sock string, o qemuOpts) *qemuProc {
	t.Helper()
	bin := needQEMU(t)
	dir := t.TempDir()
	if sock == "" {
		sock = filepath.Join(dir, "q.sock")
	}
	for attempt := 0; ; attempt++ {
		p := &qemuProc{sock: sock, exited: make(chan struct{})}
		args := append(qemu.BaseArgs(), "-qmp", "unix:"+sock+",server=on,wait=off")
		if o.control {
			p.ctlSock = filepath.Join(dir, "ctl.sock")
			args = append(args, "-qmp", "unix:"+p.ctlSock+",server=on,wait=off")
		}
		if o.vnc {
			port := o.port
			if port == 0 {
				port = qemu.FreeVNCPort(t)
			}
			p.port = int32(port)
			args = append(args, "-vnc", fmt.Sprintf("127.0.0.1:%d", port-qemu.BasePort))
		}
		var stderr strings.Builder
		p.cmd = exec.Command(bin, args...)
		p.cmd.Stderr = &stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("start qemu: %v", err)
		}
		go func() { p.cmd.Wait(); close(p.exited) }()
		t.Cleanup(func() { p.kill(syscall.SIGKILL) })
		err := p.waitReady()
		if err == nil {
			return p
		}
		p.kill(syscall.SIGKILL)
		if attempt == 3 || o.port != 0 {
			t.Fatalf("qemu %s did not come up: %v; stderr: %s", strings.Join(args, " "), err, stderr.String())
		}
	}
}

// waitReady waits for the QMP socket(s) and the VNC port.
func (p *qemuProc) waitReady() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("qemu exited: %v", p.cmd.ProcessState)
		default:
		}
		ready := exists(p.sock) && (p.ctlSock == "" || exists(p.ctlSock))
		if ready && p.port != 0 {
			c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p.port))))
			ready = err == nil
			if c != nil {
				c.Close()
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// kill sends sig and waits for QEMU to exit.
func (p *qemuProc) kill(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// control runs a command on the test's own monitor.
func (p *qemuProc) control(t *testing.T, command string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, p.ctlSock, 5*time.Second)
	if err != nil {
		t.Fatalf("control monitor: %v", err)
	}
	defer c.close()
	if err := c.execute(ctx, command, nil); err != nil {
		t.Fatalf("control monitor: %v", err)
	}
}

func newUUID(t *testing.T) string {
	t.Helper()
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// newDriver starts a driver for instances and closes it when the test
// ends; logs go to t.Log.
func newDriver(t *testing.T, proxyClientAddress string, instances ...Instance) *Driver {
	t.Helper()
	d, err := New(Config{
		Instances:          instances,
		ProxyClientAddress: proxyClientAddress,
		Logger:             slog.New(slog.NewTextHandler(testlog.New(t), &slog.HandlerOptions{Level: slog.LevelDebug})),
		MaxBackoff:         300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// watch subscribes to d's events until the test ends.
func watch(t *testing.T, d *Driver) <-chan driver.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return d.Watch(ctx)
}

// waitEvent waits for an event of kind for uuid, skipping others, and
// returns how long it took.
func waitEvent(t *testing.T, events <-chan driver.Event, uuid string, kind driver.EventKind, within time.Duration) (driver.Event, time.Duration) {
	t.Helper()
	start := time.Now()
	timeout := time.After(within)
	for {
		select {
		case ev := <-events:
			if ev.UUID == uuid && ev.Kind == kind {
				return ev, time.Since(start)
			}
			t.Logf("event %s %s %q while waiting for %s", ev.UUID, ev.Kind.String(), ev.Reason, kind.String())
		case <-timeout:
			t.Fatalf("no %s event for %s within %s", kind.String(), uuid, within)
			return driver.Event{}, 0
		}
	}
}

// noEvent checks that nothing arrives for a while.
func noEvent(t *testing.T, events <-chan driver.Event, for_ time.Duration) {
	t.Helper()
	select {
	case ev := <-events:
		t.Fatalf("got event %s %s %q, want none", ev.UUID, ev.Kind.String(), ev.Reason)
	case <-time.After(for_):
	}
}
