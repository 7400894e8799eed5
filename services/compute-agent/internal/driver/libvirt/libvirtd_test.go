package libvirt

// Fixtures: a real libvirtd (started here when it is not running), real
// TCG guests defined through the libvirt API, and a log handler that tells
// the tests when the watcher has (re)subscribed.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

const (
	libvirtdPIDFile = "/run/libvirtd.pid"
	virtlogdPIDFile = "/run/virtlogd.pid"
	// subscribedMsg is logged each time the watcher has subscribed.
	subscribedMsg = "watching libvirt lifecycle events"
)

var (
	libvirtdOnce    sync.Once
	libvirtdErr     error
	libvirtdStarted bool // this test binary started libvirtd
)

// needLibvirtd makes sure libvirtd answers on qemu:///system, starting
// virtlogd and libvirtd (and installing them with apt) when needed. It
// fails the test saying why when that is impossible; outside CI,
// VNCGATE_SKIP_LIBVIRT=1 turns the failure into an explicit skip.
func needLibvirtd(t *testing.T) {
	t.Helper()
	libvirtdOnce.Do(func() { libvirtdStarted, libvirtdErr = startLibvirtd() })
	if libvirtdErr == nil {
		return
	}
	if os.Getenv("CI") != "true" && os.Getenv("VNCGATE_SKIP_LIBVIRT") == "1" {
		t.Skipf("skipping libvirt test (VNCGATE_SKIP_LIBVIRT=1): %v", libvirtdErr)
	}
	t.Fatalf("libvirt tests need a running libvirtd: %v", libvirtdErr)
}

func libvirtdUp() error {
	u, err := url.Parse(DefaultURI)
	if err != nil {
		return err
	}
	l, err := golibvirt.ConnectToURI(u)
	if err != nil {
		return err
	}
	defer l.Disconnect()
	_, err = l.ConnectGetLibVersion()
	return err
}

func startLibvirtd() (started bool, err error) {
	if libvirtdUp() == nil {
		return false, nil
	}
	if os.Geteuid() != 0 {
		return false, errors.New("libvirtd is not running on /var/run/libvirt/libvirt-sock and the test is not root, so it cannot start it")
	}
	if err := installPackages(); err != nil {
		return false, err
	}
	if !pidAlive(virtlogdPIDFile) {
		if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
			return false, fmt.Errorf("start virtlogd: %v: %s", err, out)
		}
	}
	if err := spawnLibvirtd(); err != nil {
		return false, err
	}
	return true, nil
}

// installPackages installs libvirt-daemon-system and qemu-system-x86 with
// apt when their programs are missing.
func installPackages() error {
	var missing bool
	for _, p := range []string{"libvirtd", "virtlogd", "qemu-system-x86_64", "virsh"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "libvirt-daemon-system", "qemu-system-x86")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install libvirt-daemon-system qemu-system-x86: %v: %s", err, out)
	}
	return nil
}

// spawnLibvirtd starts the daemon and waits until it answers.
func spawnLibvirtd() error {
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		return fmt.Errorf("start libvirtd: %v: %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := libvirtdUp()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirtd started but does not answer on qemu:///system: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func pidAlive(file string) bool {
	pid, err := readPID(file)
	return err == nil && syscall.Kill(pid, 0) == nil
}

// stopLibvirtd terminates libvirtd (guests keep running) and waits for it
// to exit. Only a libvirtd this binary started is touched, unless CI=true
// or VNCGATE_LIBVIRTD_RESTART=1 say that this machine's libvirtd is the
// tests' to restart.
func stopLibvirtd(t *testing.T) {
	t.Helper()
	if !libvirtdStarted && os.Getenv("CI") != "true" && os.Getenv("VNCGATE_LIBVIRTD_RESTART") != "1" {
		t.Skip("libvirtd was running before the tests: set VNCGATE_LIBVIRTD_RESTART=1 to let this test restart it")
	}
	pid, err := readPID(libvirtdPIDFile)
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
		// Never leave the machine without libvirtd, even when the test
		// failed between stop and start.
		if libvirtdUp() != nil {
			if err := spawnLibvirtd(); err != nil {
				t.Errorf("restart libvirtd: %v", err)
			}
		}
	})
}

// adminConn is the test's own libvirt connection, for defining, starting
// and destroying guests.
func adminConn(t *testing.T) *golibvirt.Libvirt {
	t.Helper()
	u, _ := url.Parse(DefaultURI)
	l, err := golibvirt.ConnectToURI(u)
	if err != nil {
		t.Fatalf("connect to libvirt: %v", err)
	}
	t.Cleanup(func() { l.Disconnect() })
	return l
}

// graphics variants for testDomain.
const (
	vncAutoport = "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
	noGraphics  = ""
)

func vncAt(port int) string {
	return fmt.Sprintf("<graphics type='vnc' port='%d' autoport='no' listen='127.0.0.1'/>", port)
}

type testDomain struct {
	UUID string
	Name string
	dom  golibvirt.Domain
}

func newUUID(t *testing.T) string {
	t.Helper()
	var u golibvirt.UUID
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return formatUUID(u)
}

func domainXMLFor(name, uuid, graphics string) string {
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
</domain>`, name, uuid, graphics)
}

// defineDomain defines a persistent tiny TCG guest (no disk, 64 MiB) and
// removes it (destroy + undefine) when the test ends.
func defineDomain(t *testing.T, l *golibvirt.Libvirt, graphics string) testDomain {
	t.Helper()
	uuid := newUUID(t)
	td := testDomain{UUID: uuid, Name: "vncgate-test-" + uuid[:8]}
	dom, err := l.DomainDefineXML(domainXMLFor(td.Name, uuid, graphics))
	if err != nil {
		t.Fatalf("define domain: %v", err)
	}
	td.dom = dom
	t.Cleanup(func() {
		u, _ := url.Parse(DefaultURI)
		c, err := golibvirt.ConnectToURI(u)
		if err != nil {
			t.Logf("cleanup of %s: %v", td.Name, err)
			return
		}
		defer c.Disconnect()
		c.DomainDestroy(dom)
		if err := c.DomainUndefine(dom); err != nil && !golibvirt.IsNotFound(err) {
			t.Logf("cleanup of %s: undefine: %v", td.Name, err)
		}
	})
	return td
}

// redefine replaces the persistent definition of td (it must be stopped).
func redefine(t *testing.T, l *golibvirt.Libvirt, td testDomain, graphics string) {
	t.Helper()
	if _, err := l.DomainDefineXML(domainXMLFor(td.Name, td.UUID, graphics)); err != nil {
		t.Fatalf("redefine domain: %v", err)
	}
}

func startDomain(t *testing.T, l *golibvirt.Libvirt, td testDomain) {
	t.Helper()
	if err := l.DomainCreate(td.dom); err != nil {
		t.Fatalf("start %s: %v", td.Name, err)
	}
}

// vncdisplayPort asks virsh (not the driver) where td's VNC server listens.
func vncdisplayPort(t *testing.T, td testDomain) int32 {
	t.Helper()
	out, err := exec.Command("virsh", "-c", DefaultURI, "vncdisplay", td.UUID).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh vncdisplay: %v: %s", err, out)
	}
	s := strings.TrimSpace(string(out))
	i := strings.LastIndex(s, ":")
	n, err := strconv.Atoi(s[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("virsh vncdisplay: unexpected %q", s)
	}
	return int32(5900 + n)
}

// readRFBBanner checks that an RFB server answers on 127.0.0.1:port.
func readRFBBanner(t *testing.T, port int32) {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), 2*time.Second)
	if err != nil {
		t.Fatalf("dial vnc port %d: %v", port, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 12)
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("read rfb banner on %d: %v", port, err)
	}
	if !strings.HasPrefix(string(buf), "RFB ") {
		t.Fatalf("got banner %q on port %d, want RFB", buf, port)
	}
}

// freePort returns a TCP port on 127.0.0.1 that nobody listens on now,
// outside libvirt's autoport range start so that autoport guests of other
// tests do not take it.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		var b [2]byte
		rand.Read(b[:])
		p := 20000 + int(b[0])<<8 + int(b[1])%1000
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// world is a driver under test with its watcher running.
type world struct {
	d          *Driver
	events     <-chan driver.Event
	subscribed chan struct{}
}

// newWorld starts a driver and its watcher and waits until the watcher has
// subscribed to libvirt's events.
func newWorld(t *testing.T, cfg Config) *world {
	t.Helper()
	w := &world{subscribed: make(chan struct{}, 8)}
	cfg.Logger = slog.New(&signalHandler{
		Handler: slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}),
		msg:     subscribedMsg,
		ch:      w.subscribed,
	})
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.d = d
	ctx, cancel := context.WithCancel(context.Background())
	w.events = d.Watch(ctx)
	t.Cleanup(func() {
		cancel()
		// Watch closes the channel once its goroutine is done: after
		// that nothing logs to t any more.
		timeout := time.After(5 * time.Second)
	drain:
		for {
			select {
			case _, ok := <-w.events:
				if !ok {
					break drain
				}
			case <-timeout:
				t.Errorf("watch channel not closed 5s after its ctx ended")
				break drain
			}
		}
		d.Close()
	})
	w.waitSubscribed(t, 15*time.Second)
	return w
}

func (w *world) waitSubscribed(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-w.subscribed:
	case <-time.After(within):
		t.Fatalf("watcher did not subscribe to libvirt events within %s", within)
	}
}

// waitEvent waits for an event of kind for uuid, ignoring events of other
// domains (other tests and engineers share this libvirtd) and returning how
// long it took.
func (w *world) waitEvent(t *testing.T, uuid string, kind driver.EventKind, within time.Duration) (driver.Event, time.Duration) {
	t.Helper()
	start := time.Now()
	timeout := time.After(within)
	for {
		select {
		case ev := <-w.events:
			if ev.UUID != uuid {
				continue
			}
			if ev.Kind != kind {
				t.Logf("event %s %q while waiting for %s", ev.Kind.String(), ev.Reason, kind.String())
				continue
			}
			return ev, time.Since(start)
		case <-timeout:
			t.Fatalf("no %s event for %s within %s", kind.String(), uuid, within)
			return driver.Event{}, 0
		}
	}
}

// signalHandler passes records on and signals when one has message msg.
type signalHandler struct {
	slog.Handler
	msg string
	ch  chan struct{}
}

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *signalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &signalHandler{Handler: h.Handler.WithAttrs(as), msg: h.msg, ch: h.ch}
}

func (h *signalHandler) WithGroup(name string) slog.Handler {
	return &signalHandler{Handler: h.Handler.WithGroup(name), msg: h.msg, ch: h.ch}
}

// testWriter sends log lines to t.Log until the test's cleanups run out.
type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

// newTestWriter must be called before the cleanups that stop the loggers
// are registered, so that its own cleanup runs after them.
func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
