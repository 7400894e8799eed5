package libvirt

// Fixtures: a real libvirtd (testkit/libvirt starts it when it is not
// running), real TCG guests defined through the libvirt API, and a log
// handler that tells the tests when the watcher has (re)subscribed.

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	testlibvirt "github.com/vncgate/vncgate/testkit/libvirt"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// subscribedMsg is logged each time the watcher has subscribed.
const subscribedMsg = "watching libvirt lifecycle events"

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

// testDomain is a guest defined through the test's own connection.
type testDomain struct {
	testlibvirt.Guest
	dom golibvirt.Domain
}

// defineDomain defines a persistent tiny TCG guest (no disk, 64 MiB) and
// removes it (destroy + undefine) when the test ends.
func defineDomain(t *testing.T, l *golibvirt.Libvirt, graphics string) testDomain {
	t.Helper()
	td := testDomain{Guest: testlibvirt.NewGuest(t, "vncgate-test-")}
	dom, err := l.DomainDefineXML(td.XML(graphics))
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
	if _, err := l.DomainDefineXML(td.XML(graphics)); err != nil {
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
	s := testlibvirt.Virsh(t, "vncdisplay", td.UUID)
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
		Handler: slog.NewTextHandler(testlog.New(t), &slog.HandlerOptions{Level: slog.LevelDebug}),
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
