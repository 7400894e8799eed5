// Package qmp is the compute agent's driver for hosts that run QEMU without
// libvirt. Each instance is configured as a UUID and the path of its QMP
// monitor socket (QEMU started with -qmp unix:PATH,server=on,wait=off);
// the driver speaks QMP itself (JSON lines over the unix socket, no
// third-party library).
//
// Console asks QEMU with query-status and query-vnc:
//
//   - instance not configured here: driver.ErrNotFound;
//   - socket missing or refusing connections (the QEMU process is gone), the
//     session cut mid-call, a SHUTDOWN event seen on the session, or a run
//     state without a guest to show (shutdown, inmigrate, postmigrate,
//     guest-panicked, internal-error): driver.ErrNotRunning. A paused guest
//     still has a console;
//   - VNC not enabled, or listening on a unix socket: driver.ErrNoConsole;
//   - the monitor not answering within the timeouts (QEMU hung, or another
//     client holding the monitor, which QEMU serves one client at a time):
//     driver.ErrUnavailable.
//
// The host returned is server_proxyclient_address, or when that is empty the
// VNC listen host QEMU reports (127.0.0.1 for a wildcard).
//
// The driver keeps one QMP session per instance, opened by a monitor
// goroutine that reconnects with backoff and reports lifecycle events to
// watchers (see Watch). New starts these goroutines; Close stops them.
package qmp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// Config configures a Driver.
type Config struct {
	// Instances are the QEMU processes of this host (see ParseSockets).
	Instances []Instance
	// ProxyClientAddress is Nova's server_proxyclient_address: the host the
	// proxies dial. Empty means the VNC host QEMU reports.
	ProxyClientAddress string
	// Logger receives session and event logs; nil means slog.Default().
	Logger *slog.Logger
	// DialTimeout bounds connecting and the QMP handshake (default 3s).
	DialTimeout time.Duration
	// CallTimeout bounds each QMP command (default 5s).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts of a monitor (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
}

// Driver answers for the QEMU instances of one host. It implements
// driver.Driver and driver.Watcher and is safe for concurrent use.
type Driver struct {
	cfg      Config
	log      *slog.Logger
	monitors map[string]*monitor
	fan      fanout

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// New validates cfg and starts one monitor goroutine per instance.
func New(cfg Config) (*Driver, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	d := &Driver{
		cfg:      cfg,
		log:      cfg.Logger.With("driver", "qmp"),
		monitors: map[string]*monitor{},
		fan:      fanout{subs: map[*subscriber]struct{}{}},
	}
	for _, in := range cfg.Instances {
		uuid, err := normalizeUUID(in.UUID)
		if err != nil {
			return nil, err
		}
		if in.Socket == "" {
			return nil, fmt.Errorf("instance %s: empty qmp socket path", uuid)
		}
		if _, dup := d.monitors[uuid]; dup {
			return nil, fmt.Errorf("instance %s configured twice", uuid)
		}
		d.monitors[uuid] = &monitor{
			d:       d,
			uuid:    uuid,
			path:    in.Socket,
			log:     d.log.With("instance", uuid, "socket", in.Socket),
			dialing: make(chan struct{}, 1),
			kick:    make(chan struct{}, 1),
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	for _, m := range d.monitors {
		d.wg.Go(func() { m.run(d.ctx) })
	}
	return d, nil
}

// Close ends every QMP session and stops the monitors. Calls made
// afterwards fail with driver.ErrUnavailable; watchers stay open (silent)
// until their ctx ends.
func (d *Driver) Close() error {
	d.cancel()
	d.wg.Wait()
	return nil
}

// Instances returns the configured instances, running or not, so that
// consoleauth answers "not running" rather than "not found" for a stopped
// one.
func (d *Driver) Instances(context.Context) ([]string, error) {
	uuids := make([]string, 0, len(d.monitors))
	for uuid := range d.monitors {
		uuids = append(uuids, uuid)
	}
	slices.Sort(uuids)
	return uuids, nil
}

// vncInfo is the reply of query-vnc.
type vncInfo struct {
	Enabled bool   `json:"enabled"`
	Host    string `json:"host"`
	Service string `json:"service"`
	Family  string `json:"family"`
}

// statusInfo is the reply of query-status.
type statusInfo struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// Console returns where the VNC server of instance uuid listens.
func (d *Driver) Console(ctx context.Context, uuid string) (driver.Console, error) {
	key, err := normalizeUUID(uuid)
	m := d.monitors[key]
	if err != nil || m == nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, driver.ErrNotFound)
	}
	c, err := m.get(ctx)
	if err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, err)
	}
	if c.down.Load() {
		return driver.Console{}, fmt.Errorf("console of %s: %w: qemu reported a shutdown", uuid, driver.ErrNotRunning)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
	defer cancel()
	var st statusInfo
	if err := c.execute(ctx, "query-status", &st); err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, callError(err))
	}
	if !statusHasConsole(st.Status) {
		return driver.Console{}, fmt.Errorf("console of %s: %w: qemu run state is %q", uuid, driver.ErrNotRunning, st.Status)
	}
	var v vncInfo
	if err := c.execute(ctx, "query-vnc", &v); err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, callError(err))
	}
	port, err := vncPort(v)
	if err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, err)
	}
	// What Console hands out is what a later change is measured against.
	m.sawRunning(port, driver.ReasonStarted)
	return driver.Console{Host: consoleHost(d.cfg.ProxyClientAddress, v.Host), Port: port}, nil
}

// vncPort is the TCP port of a VNC server QEMU reports.
func vncPort(v vncInfo) (int32, error) {
	if !v.Enabled {
		return 0, fmt.Errorf("%w: vnc is not enabled in qemu", driver.ErrNoConsole)
	}
	if v.Family == "unix" {
		return 0, fmt.Errorf("%w: vnc listens on a unix socket", driver.ErrNoConsole)
	}
	port, err := strconv.ParseInt(v.Service, 10, 32)
	if err != nil || port <= 0 || port > 65535 {
		return 0, fmt.Errorf("%w: vnc service %q is not a tcp port", driver.ErrNoConsole, v.Service)
	}
	return int32(port), nil
}

// statusHasConsole reports whether a guest in QEMU run state s can be shown:
// every state but those where there is no guest here (or not yet, or no
// more).
func statusHasConsole(s string) bool {
	switch s {
	case "shutdown", "inmigrate", "postmigrate", "guest-panicked", "internal-error":
		return false
	}
	return true
}

// consoleHost is server_proxyclient_address when configured, else the VNC
// host, with a wildcard replaced by 127.0.0.1.
func consoleHost(proxyClientAddress, vncHost string) string {
	if proxyClientAddress != "" {
		return proxyClientAddress
	}
	if ip := net.ParseIP(vncHost); vncHost == "" || (ip != nil && ip.IsUnspecified()) {
		return "127.0.0.1"
	}
	return vncHost
}

// gone reports whether err says that the QEMU process is gone or going:
// no socket, nobody accepting, or the connection cut by its end.
func gone(err error) bool {
	for _, e := range []error{syscall.ENOENT, syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, io.EOF, io.ErrUnexpectedEOF, net.ErrClosed, errClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dialError maps a failed connection to the monitor socket: the QEMU
// process gone means driver.ErrNotRunning; anything else (a timeout: QEMU
// hung or the monitor held by another client) driver.ErrUnavailable.
func dialError(path string, err error) error {
	if gone(err) {
		return fmt.Errorf("%w: qemu is not running (monitor %s: %w)", driver.ErrNotRunning, path, err)
	}
	return fmt.Errorf("%w: qmp monitor %s: %w", driver.ErrUnavailable, path, err)
}

// callError maps a failed command: the session cut means QEMU exited; a
// timeout means it does not answer; QEMU's own errors pass as they are.
func callError(err error) error {
	var qerr *Error
	switch {
	case errors.As(err, &qerr):
		return err
	case gone(err):
		return fmt.Errorf("%w: qemu exited: %w", driver.ErrNotRunning, err)
	default:
		return fmt.Errorf("%w: %w", driver.ErrUnavailable, err)
	}
}
