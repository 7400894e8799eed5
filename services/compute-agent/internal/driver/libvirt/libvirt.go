// Package libvirt is the compute agent's driver for hosts managed by
// libvirt. It speaks libvirt's RPC protocol over the libvirt socket with the
// pure-Go client github.com/digitalocean/go-libvirt (no cgo, no libvirt.so).
//
// Console reads a running domain's live XML and returns the VNC port of its
// first <graphics type='vnc'> device with server_proxyclient_address as the
// host, as Nova does. Instances lists every domain libvirt knows, defined
// but stopped ones included, so that consoleauth can answer "not running"
// (409) instead of "not found" (404) for them. Watch reports lifecycle
// events (driver.Watcher).
//
// The driver survives libvirtd restarts: it holds one connection, shared by
// all calls; while libvirtd is away every call fails fast with
// driver.ErrUnavailable, and the connection is dialled again on demand with
// exponential backoff. Every libvirt call is bounded by Config.CallTimeout.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vncgate/vncgate/services/compute-agent/internal/backoff"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// DefaultURI is the connection URI used when Config.URI is empty: the
// system QEMU driver over the local socket /var/run/libvirt/libvirt-sock.
const DefaultURI = "qemu:///system"

// Config configures a Driver.
type Config struct {
	// URI is the libvirt connection URI (Nova's [libvirt] connection_uri).
	// Empty means DefaultURI. Supported: qemu:///system (local unix socket;
	// "?socket=/path" picks another one) and qemu+tcp://host[:port]/system;
	// go-libvirt also dials qemu+tls:// and qemu+ssh://.
	URI string
	// ProxyClientAddress is Nova's server_proxyclient_address: the host the
	// proxies dial for every console of this host. Empty means the domain's
	// VNC listen address (127.0.0.1 when that is unset or a wildcard).
	ProxyClientAddress string
	// Logger receives connection and event logs; nil means slog.Default().
	Logger *slog.Logger
	// CallTimeout bounds each libvirt call and each connection attempt
	// (default 10s).
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (defaults 100ms and 5s); the wait doubles after each failure.
	MinBackoff, MaxBackoff time.Duration
}

// Driver answers for the domains of one libvirt host. It implements
// driver.Driver and driver.Watcher and is safe for concurrent use.
type Driver struct {
	cfg Config
	uri *url.URL
	log *slog.Logger

	dialing chan struct{} // one slot: one connection attempt at a time

	mu       sync.Mutex
	conn     *golibvirt.Libvirt // nil when not connected
	nextDial time.Time          // no connection attempt before this
	backoff  backoff.Backoff
	closed   bool
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// New returns a driver for cfg. It does not connect: the first call does,
// so an agent starts even while libvirtd is down.
func New(cfg Config) (*Driver, error) {
	if cfg.URI == "" {
		cfg.URI = DefaultURI
	}
	u, err := url.Parse(cfg.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt uri %q: %w", cfg.URI, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("libvirt uri %q: no scheme (want e.g. %s)", cfg.URI, DefaultURI)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	return &Driver{
		cfg:     cfg,
		uri:     u,
		log:     cfg.Logger.With("driver", "libvirt", "uri", cfg.URI),
		dialing: make(chan struct{}, 1),
		backoff: backoff.Backoff{Min: cfg.MinBackoff, Max: cfg.MaxBackoff},
	}, nil
}

// Close drops the libvirt connection. Calls made afterwards fail with
// driver.ErrUnavailable; watchers stay open (silent) until their ctx ends.
func (d *Driver) Close() error {
	d.mu.Lock()
	l := d.conn
	d.conn = nil
	d.closed = true
	d.mu.Unlock()
	if l == nil {
		return nil
	}
	return l.Disconnect()
}

// Console returns where the VNC server of the running domain uuid listens.
func (d *Driver) Console(ctx context.Context, uuid string) (driver.Console, error) {
	id, err := parseUUID(uuid)
	if err != nil {
		return driver.Console{}, fmt.Errorf("%w: %w", driver.ErrNotFound, err)
	}
	var (
		state golibvirt.DomainState
		desc  string
	)
	err = d.do(ctx, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByUUID(id)
		if err != nil {
			return err
		}
		s, _, err := l.DomainGetState(dom, 0)
		if err != nil {
			return err
		}
		state = golibvirt.DomainState(s)
		if !hasConsole(state) {
			return nil
		}
		// Flags 0: the live XML of a running domain, which carries the
		// port QEMU actually listens on (autoport assigns it at start).
		desc, err = l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, err)
	}
	if !hasConsole(state) {
		return driver.Console{}, fmt.Errorf("console of %s: %w: domain is %s", uuid, driver.ErrNotRunning, stateName(state))
	}
	g, err := parseVNC(desc)
	if err != nil {
		return driver.Console{}, fmt.Errorf("console of %s: %w", uuid, err)
	}
	return driver.Console{Host: consoleHost(d.cfg.ProxyClientAddress, g.Listen), Port: g.Port}, nil
}

// Instances returns the UUIDs of every domain libvirt knows on this host:
// running ones and defined (persistent) ones that are stopped.
func (d *Driver) Instances(ctx context.Context) ([]string, error) {
	var doms []golibvirt.Domain
	err := d.do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		doms, _, err = l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	uuids := make([]string, 0, len(doms))
	for _, dom := range doms {
		uuids = append(uuids, formatUUID(dom.UUID))
	}
	return uuids, nil
}

// hasConsole reports whether a domain in state s has a QEMU process, hence a
// VNC server: running, paused, blocked, shutting down or PM-suspended.
func hasConsole(s golibvirt.DomainState) bool {
	switch s {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked, golibvirt.DomainPaused,
		golibvirt.DomainShutdown, golibvirt.DomainPmsuspended:
		return true
	}
	return false
}

func stateName(s golibvirt.DomainState) string {
	switch s {
	case golibvirt.DomainShutoff:
		return "shut off"
	case golibvirt.DomainCrashed:
		return "crashed"
	case golibvirt.DomainNostate:
		return "in no state"
	}
	return fmt.Sprintf("in state %d", s)
}

// do runs fn against the libvirt connection, bounded by CallTimeout and ctx.
// Errors come back as driver sentinels where one applies: a missing domain
// is driver.ErrNotFound, a lost or unreachable libvirtd
// driver.ErrUnavailable; other libvirt errors are returned as they are.
func (d *Driver) do(ctx context.Context, fn func(*golibvirt.Libvirt) error) error {
	l, err := d.client(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
	defer cancel()
	// go-libvirt calls take no context: run the call aside and stop
	// waiting at the deadline. A call that outlives it ends when libvirtd
	// answers or the connection (dropped below) is closed.
	done := make(chan error, 1)
	go func() { done <- fn(l) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			d.drop(l, "libvirt call timed out")
		}
		return fmt.Errorf("%w: libvirt call: %w", driver.ErrUnavailable, ctx.Err())
	}
	if err == nil {
		return nil
	}
	var lerr golibvirt.Error
	switch {
	case golibvirt.IsNotFound(err):
		return fmt.Errorf("%w: %w", driver.ErrNotFound, err)
	case errors.As(err, &lerr):
		switch golibvirt.ErrorNumber(lerr.Code) {
		case golibvirt.ErrNoConnect, golibvirt.ErrInvalidConn, golibvirt.ErrRPC, golibvirt.ErrNoServer,
			golibvirt.ErrOperationTimeout, golibvirt.ErrAgentUnresponsive:
			return fmt.Errorf("%w: %w", driver.ErrUnavailable, err)
		}
		return err
	default:
		// Not an answer from libvirtd: the transport failed.
		if !l.IsConnected() {
			d.drop(l, "libvirt connection lost")
		}
		return fmt.Errorf("%w: %w", driver.ErrUnavailable, err)
	}
}

// current returns the live connection, or nil.
func (d *Driver) current() *golibvirt.Libvirt {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil && !d.conn.IsConnected() {
		d.log.Warn("libvirt connection lost")
		d.conn = nil
	}
	return d.conn
}

// drop forgets l (if it is still the current connection) and closes it, so
// the next call dials afresh.
func (d *Driver) drop(l *golibvirt.Libvirt, why string) {
	d.mu.Lock()
	if d.conn != l {
		d.mu.Unlock()
		return
	}
	d.conn = nil
	d.mu.Unlock()
	d.log.Warn("dropping libvirt connection", "reason", why)
	go l.Disconnect()
}

// client returns the live connection, dialling one when there is none.
// During the backoff after a failed attempt it fails fast with
// driver.ErrUnavailable rather than piling attempts onto a restarting
// libvirtd.
func (d *Driver) client(ctx context.Context) (*golibvirt.Libvirt, error) {
	if l := d.current(); l != nil {
		return l, nil
	}
	select {
	case d.dialing <- struct{}{}:
		defer func() { <-d.dialing }()
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for libvirt connection: %w", driver.ErrUnavailable, ctx.Err())
	}
	if l := d.current(); l != nil {
		return l, nil
	}
	d.mu.Lock()
	closed, wait := d.closed, time.Until(d.nextDial)
	d.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("%w: driver closed", driver.ErrUnavailable)
	}
	if wait > 0 {
		return nil, fmt.Errorf("%w: libvirt unreachable, next connection attempt in %s", driver.ErrUnavailable, wait.Round(time.Millisecond))
	}
	l, err := d.dial(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		wait := d.backoff.Next()
		d.nextDial = time.Now().Add(wait)
		d.log.Warn("libvirt connection failed", "error", err, "retry_in", wait.Round(time.Millisecond))
		return nil, fmt.Errorf("%w: %w", driver.ErrUnavailable, err)
	}
	if d.closed {
		go l.Disconnect()
		return nil, fmt.Errorf("%w: driver closed", driver.ErrUnavailable)
	}
	d.backoff.Reset()
	d.nextDial = time.Time{}
	d.conn = l
	d.log.Info("connected to libvirt")
	return l, nil
}

// waitClient is client for the watcher: it waits out backoffs until it has
// a connection or ctx ends.
func (d *Driver) waitClient(ctx context.Context) (*golibvirt.Libvirt, error) {
	for {
		l, err := d.client(ctx)
		if err == nil {
			return l, nil
		}
		d.mu.Lock()
		wait := time.Until(d.nextDial)
		if d.closed {
			wait = d.cfg.MaxBackoff
		}
		d.mu.Unlock()
		t := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// dial connects to libvirtd within CallTimeout.
func (d *Driver) dial(ctx context.Context) (*golibvirt.Libvirt, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
	defer cancel()
	type result struct {
		l   *golibvirt.Libvirt
		err error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := golibvirt.ConnectToURI(d.uri)
		ch <- result{l, err}
	}()
	select {
	case r := <-ch:
		return r.l, r.err
	case <-ctx.Done():
		// Close a connection that completes after we gave up on it.
		go func() {
			if r := <-ch; r.err == nil {
				r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("connect to libvirt: %w", ctx.Err())
	}
}
