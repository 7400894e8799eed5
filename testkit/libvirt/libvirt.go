// Package libvirt gives tests a real libvirtd and tiny guests to run
// under it.
//
// Require makes sure virtlogd and libvirtd run and answer on qemu:///system,
// starting them when the test runs as root and they do not. It never
// installs anything: `make deps` (deploy/scripts/install-deps.sh) installs
// libvirt and QEMU. Like package qemu, when their programs are missing it
// fails the test under CI=true and skips it, saying so, elsewhere. When they
// are installed but libvirtd cannot be had it fails the test saying why;
// outside CI, VNCGATE_SKIP_LIBVIRT=1 turns that failure into an explicit
// skip. Guests are TCG (no KVM), 64 MiB, without disk: they boot nothing,
// but QEMU runs and serves the graphics the test asks for.
package libvirt

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// URI is the libvirt connection the tests use.
const URI = "qemu:///system"

// PID files of the daemons started with -d.
const (
	libvirtdPIDFile = "/run/libvirtd.pid"
	virtlogdPIDFile = "/run/virtlogd.pid"
)

// answerWithin is how long a started libvirtd may take to answer.
const answerWithin = 20 * time.Second

// programs are what the tests run: Debian packages libvirt-daemon-system
// (libvirtd, virtlogd), libvirt-clients (virsh) and qemu-system-x86.
var programs = []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"}

// Once per test binary: which programs are missing, whether libvirtd
// answers, and whether this binary started it (and so may stop it).
var (
	requireOnce sync.Once
	missing     []string
	requireErr  error
	started     bool
)

// Require makes sure libvirtd answers on URI, starting virtlogd and libvirtd
// the first time it is called in a test binary. When libvirt's or QEMU's
// programs are missing it fails t under CI=true and skips t otherwise. When
// libvirtd cannot be had for another reason it fails t with the reason;
// outside CI (CI != "true") VNCGATE_SKIP_LIBVIRT=1 skips t instead.
func Require(t testing.TB) {
	t.Helper()
	requireOnce.Do(func() {
		for _, p := range programs {
			if _, err := exec.LookPath(p); err != nil {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
			started, requireErr = ensureRunning()
		}
	})
	ci := os.Getenv("CI") == "true"
	switch {
	case len(missing) > 0 && ci:
		t.Fatalf("%s not found (CI=true); make deps installs libvirt-daemon-system, libvirt-clients and qemu-system-x86", strings.Join(missing, ", "))
	case len(missing) > 0:
		t.Skipf("skipping libvirt test: %s not found (make deps installs them)", strings.Join(missing, ", "))
	case requireErr == nil:
		return
	case !ci && os.Getenv("VNCGATE_SKIP_LIBVIRT") == "1":
		t.Skipf("skipping libvirt test (VNCGATE_SKIP_LIBVIRT=1): %v", requireErr)
	}
	t.Fatalf("this test needs a running libvirtd: %v", requireErr)
}

// Up reports whether libvirtd answers on URI (nil) or why not.
func Up() error {
	out, err := exec.Command("virsh", "-c", URI, "version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("virsh -c %s version: %v: %s", URI, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ensureRunning starts the daemons that do not run; started says whether it
// started libvirtd.
func ensureRunning() (started bool, err error) {
	if Up() == nil {
		return false, nil
	}
	if os.Geteuid() != 0 {
		return false, errors.New("libvirtd is not running and the test is not root, so it cannot start it")
	}
	if !pidAlive(virtlogdPIDFile) {
		if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
			return false, fmt.Errorf("start virtlogd: %v: %s", err, out)
		}
	}
	if err := StartLibvirtd(); err != nil {
		return false, err
	}
	return true, nil
}

// StartLibvirtd starts libvirtd (libvirtd -d) unless its PID file names a
// live process, and waits until it answers on URI.
func StartLibvirtd() error {
	if !pidAlive(libvirtdPIDFile) {
		if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
			return fmt.Errorf("start libvirtd: %v: %s", err, out)
		}
	}
	deadline := time.Now().Add(answerWithin)
	for {
		err := Up()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirtd started but does not answer on %s: %w", URI, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StopLibvirtd terminates libvirtd (guests keep running) and waits for it to
// exit; t's cleanup starts it again if nothing did meanwhile, so the machine
// is never left without libvirtd. Only a libvirtd that this test binary
// started is touched, unless CI=true or VNCGATE_LIBVIRTD_RESTART=1 say that
// this machine's libvirtd is the tests' to restart; otherwise t is skipped.
// Call Require first.
func StopLibvirtd(t testing.TB) {
	t.Helper()
	if !started && os.Getenv("CI") != "true" && os.Getenv("VNCGATE_LIBVIRTD_RESTART") != "1" {
		t.Skip("libvirtd was running before the tests: set VNCGATE_LIBVIRTD_RESTART=1 to let this test restart it")
	}
	pid, err := ReadPID(libvirtdPIDFile)
	if err != nil {
		t.Fatalf("libvirtd pid: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop libvirtd (pid %d): %v", pid, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd (pid %d) still running 15s after SIGTERM", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		// Even when the test failed between stop and start.
		if Up() != nil {
			if err := StartLibvirtd(); err != nil {
				t.Errorf("restart libvirtd: %v", err)
			}
		}
	})
}

// MayRestart reports whether StopLibvirtd would stop libvirtd rather than
// skip: this test binary started it, or CI=true or
// VNCGATE_LIBVIRTD_RESTART=1 say that it is the tests' to restart. Call
// Require first.
func MayRestart() bool {
	return started || os.Getenv("CI") == "true" || os.Getenv("VNCGATE_LIBVIRTD_RESTART") == "1"
}

// ReadPID reads a PID file such as /run/libvirtd.pid or libvirt's
// /run/libvirt/qemu/{guest}.pid.
func ReadPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func pidAlive(file string) bool {
	pid, err := ReadPID(file)
	return err == nil && syscall.Kill(pid, 0) == nil
}

// Virsh runs virsh on URI and returns its output with surrounding space
// trimmed; it fails t with the output when virsh fails.
func Virsh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", URI}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Graphics devices for Guest.XML.
const (
	// VNCAutoport is a VNC server on 127.0.0.1 on a port libvirt picks
	// (the lowest free one from 5900).
	VNCAutoport = "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
	// NoGraphics is a guest without any graphics device.
	NoGraphics = ""
)

// VNCAt is a VNC server on 127.0.0.1:port (port >= 5900).
func VNCAt(port int) string {
	return fmt.Sprintf("<graphics type='vnc' port='%d' autoport='no' listen='127.0.0.1'/>", port)
}

// Guest names a test guest.
type Guest struct {
	Name string
	UUID string
}

// NewGuest returns a guest with a fresh random UUID, named namePrefix
// followed by the UUID's first 8 hex digits. It defines nothing.
func NewGuest(t testing.TB, namePrefix string) Guest {
	t.Helper()
	uuid := NewUUID(t)
	return Guest{Name: namePrefix + uuid[:8], UUID: uuid}
}

// NewUUID returns a random (version 4) UUID in its canonical lower-case
// form.
func NewUUID(t testing.TB) string {
	t.Helper()
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// XML is g's libvirt domain: a TCG guest (no KVM), one vCPU, 64 MiB, no
// disk, destroyed if it crashes, with graphics (VNCAutoport, VNCAt(…) or
// NoGraphics) as its only device.
func (g Guest) XML(graphics string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    %s
  </devices>
</domain>`, g.Name, g.UUID, graphics)
}
