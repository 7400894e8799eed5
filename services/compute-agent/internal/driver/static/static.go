// Package static is a compute-agent driver that reads a host's instances
// from an inventory file rather than asking a hypervisor: for demos, tests
// and hosts whose VNC servers are started by hand.
//
// The inventory is JSON; unknown fields are refused so typos surface:
//
//	{"instances": [
//	  {"uuid": "5f1c0c3e-8d6c-4a57-9a2e-0c6f8f0f4b1a", "vnc_host": "127.0.0.1",
//	   "vnc_port": 5901, "internal_access_path": "", "state": "running"}
//	]}
//
// Its fields:
//
//   - uuid: required, 8-4-4-4-12 hex digits, unique (compared lower-cased);
//   - vnc_host: optional IP address or host name; empty means the agent's
//     server_proxyclient_address;
//   - vnc_port: 1-65535; 0 or absent means the instance has no VNC console;
//   - internal_access_path: optional, no spaces or control characters;
//   - state: "running" (default), "paused" (the console still works) or
//     "stopped".
//
// Reload: Run re-reads the file when its modification time, size or inode
// changes (checked every Options.PollInterval, 1 s by default), and Reload
// re-reads it at once (the agent calls it on SIGHUP). A file that does not
// parse is logged and ignored: the last good inventory stays in force. Each
// change is reported to watchers as driver events: an instance that appears
// is Started, one that goes away is MigratedAway (it left this host), one
// that stops is Stopped, one that starts again is Started, and one that runs
// with a new VNC host, port or path is ConsoleChanged.
package static

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// ErrInvalidInventory wraps every reason an inventory is refused.
var ErrInvalidInventory = errors.New("invalid inventory")

// Instance states.
const (
	StateRunning = "running"
	StatePaused  = "paused"
	StateStopped = "stopped"
)

// Instance is one entry of the inventory.
type Instance struct {
	UUID               string `json:"uuid"`
	VNCHost            string `json:"vnc_host,omitempty"`
	VNCPort            int    `json:"vnc_port,omitempty"`
	InternalAccessPath string `json:"internal_access_path,omitempty"`
	State              string `json:"state,omitempty"`
}

// Inventory is the file's content.
type Inventory struct {
	Instances []Instance `json:"instances"`
}

func (in Instance) running() bool { return in.State != StateStopped }

func (in Instance) console() driver.Console {
	return driver.Console{Host: in.VNCHost, Port: int32(in.VNCPort), InternalAccessPath: in.InternalAccessPath}
}

// Parse decodes and checks an inventory. It returns the instances by UUID
// (lower-cased, state defaulted), or an error wrapping ErrInvalidInventory
// that names the entry and the field at fault.
func Parse(data []byte) (map[string]Instance, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var inv Inventory
	if err := dec.Decode(&inv); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidInventory, jsonError(data, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the top-level object", ErrInvalidInventory)
	}
	out := make(map[string]Instance, len(inv.Instances))
	first := map[string]int{}
	for i, in := range inv.Instances {
		in.UUID = strings.ToLower(in.UUID)
		if in.State == "" {
			in.State = StateRunning
		}
		if err := validate(in); err != nil {
			return nil, fmt.Errorf("%w: instances[%d]: %s", ErrInvalidInventory, i, err)
		}
		if j, dup := first[in.UUID]; dup {
			return nil, fmt.Errorf("%w: instances[%d]: uuid %s duplicates instances[%d]", ErrInvalidInventory, i, in.UUID, j)
		}
		first[in.UUID] = i
		out[in.UUID] = in
	}
	return out, nil
}

func validate(in Instance) error {
	if in.UUID == "" {
		return errors.New("uuid missing")
	}
	if !isUUID(in.UUID) {
		return fmt.Errorf("uuid %q is not a UUID (want 8-4-4-4-12 hex digits)", in.UUID)
	}
	if in.VNCPort < 0 || in.VNCPort > 65535 {
		return fmt.Errorf("uuid %s: vnc_port %d out of range 1-65535 (0 or absent: no console)", in.UUID, in.VNCPort)
	}
	if in.VNCHost != "" && !isHost(in.VNCHost) {
		return fmt.Errorf("uuid %s: vnc_host %q is not an IP address or host name", in.UUID, in.VNCHost)
	}
	if strings.ContainsFunc(in.InternalAccessPath, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("uuid %s: internal_access_path must not contain spaces or control characters", in.UUID)
	}
	switch in.State {
	case StateRunning, StatePaused, StateStopped:
	default:
		return fmt.Errorf("uuid %s: state %q unknown (want running, paused or stopped)", in.UUID, in.State)
	}
	return nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

func isHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// jsonError adds the line and column to JSON errors that carry an offset.
func jsonError(data []byte, err error) string {
	var offset int64 = -1
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		offset = syn.Offset - 1 // the offending byte was read

	case errors.As(err, &typ):
		offset = typ.Offset
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if errors.Is(err, io.EOF) {
		return "empty file"
	}
	if offset < 0 {
		return msg
	}
	offset = min(offset, int64(len(data)))
	line := 1 + bytes.Count(data[:offset], []byte("\n"))
	col := offset - int64(bytes.LastIndexByte(data[:offset], '\n'))
	return fmt.Sprintf("line %d column %d: %s", line, col, msg)
}

// Options configure a Driver. Zero fields take the defaults shown.
type Options struct {
	// PollInterval is how often Run checks the file for changes: 1s.
	PollInterval time.Duration
	// Logger receives reload logs; nil discards them.
	Logger *slog.Logger
}

// Driver serves the instances of an inventory file. It implements
// driver.Driver and driver.Watcher.
type Driver struct {
	path string
	opts Options
	log  *slog.Logger

	reloadMu sync.Mutex // serialises reloads and event delivery
	stamp    fileStamp
	sum      [sha256.Size]byte
	lastErr  string

	mu        sync.RWMutex // guards instances and subs
	instances map[string]Instance
	subs      []*subscriber
}

type subscriber struct {
	ctx context.Context
	ch  chan driver.Event
}

// fileStamp tells whether a file may have changed without reading it.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// Open reads and checks the inventory at path.
func Open(path string, o Options) (*Driver, error) {
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{path: path, opts: o, log: log.With("inventory", path)}
	stamp, data, err := d.read()
	if err != nil {
		return nil, err
	}
	inst, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	d.stamp, d.sum, d.instances = stamp, sha256.Sum256(data), inst
	return d, nil
}

// Console returns the VNC server of a running or paused instance.
func (d *Driver) Console(_ context.Context, uuid string) (driver.Console, error) {
	d.mu.RLock()
	in, ok := d.instances[strings.ToLower(uuid)]
	d.mu.RUnlock()
	switch {
	case !ok:
		return driver.Console{}, fmt.Errorf("instance %s: %w", uuid, driver.ErrNotFound)
	case !in.running():
		return driver.Console{}, fmt.Errorf("instance %s: %w", uuid, driver.ErrNotRunning)
	case in.VNCPort == 0:
		return driver.Console{}, fmt.Errorf("instance %s: %w", uuid, driver.ErrNoConsole)
	}
	return in.console(), nil
}

// Instances lists every instance of the inventory, stopped ones included
// (they are still on this host), sorted.
func (d *Driver) Instances(context.Context) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	ids := make([]string, 0, len(d.instances))
	for id := range d.instances {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// Watch returns the events of every later reload until ctx ends; the
// channel is closed after that.
func (d *Driver) Watch(ctx context.Context) <-chan driver.Event {
	s := &subscriber{ctx: ctx, ch: make(chan driver.Event, 64)}
	d.mu.Lock()
	d.subs = append(d.subs, s)
	d.mu.Unlock()
	go func() {
		<-ctx.Done()
		d.reloadMu.Lock() // no delivery is under way
		defer d.reloadMu.Unlock()
		d.mu.Lock()
		d.subs = slices.DeleteFunc(d.subs, func(x *subscriber) bool { return x == s })
		d.mu.Unlock()
		close(s.ch)
	}()
	return s.ch
}

// Run checks the file every PollInterval and reloads it when it changed,
// until ctx ends.
func (d *Driver) Run(ctx context.Context) {
	t := time.NewTicker(d.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = d.reload(false)
		}
	}
}

// Reload re-reads the file now. On error the previous inventory stays.
func (d *Driver) Reload() error { return d.reload(true) }

func (d *Driver) reload(force bool) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	stamp, err := statFile(d.path)
	if err == nil && !force && stamp == d.stamp {
		return nil
	}
	var data []byte
	if err == nil {
		stamp, data, err = d.read()
	}
	if err != nil {
		d.logOnce(err)
		return err
	}
	d.stamp = stamp
	sum := sha256.Sum256(data)
	if sum == d.sum {
		d.lastErr = ""
		return nil
	}
	inst, err := Parse(data)
	if err != nil {
		err = fmt.Errorf("%s: %w", d.path, err)
		d.logOnce(err)
		return err
	}
	d.sum, d.lastErr = sum, ""

	d.mu.Lock()
	old := d.instances
	d.instances = inst
	subs := slices.Clone(d.subs)
	d.mu.Unlock()

	events := diff(old, inst)
	d.log.Info("inventory reloaded", "instances", len(inst), "changes", len(events))
	for _, ev := range events {
		for _, s := range subs {
			select {
			case s.ch <- ev:
			case <-s.ctx.Done():
			}
		}
	}
	return nil
}

// logOnce logs a reload error unless it is the same as the last one, so a
// broken file is reported once rather than every poll.
func (d *Driver) logOnce(err error) {
	if err.Error() != d.lastErr {
		d.lastErr = err.Error()
		d.log.Error("inventory not reloaded, keeping the last good one", "error", err)
	}
}

func (d *Driver) read() (fileStamp, []byte, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return fileStamp{}, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileStamp{}, nil, err
	}
	const maxSize = 64 << 20
	if fi.Size() > maxSize {
		return fileStamp{}, nil, fmt.Errorf("%s: %w: larger than %d bytes", d.path, ErrInvalidInventory, maxSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return fileStamp{}, nil, err
	}
	return stampOf(fi), data, nil
}

func statFile(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return stampOf(fi), nil
}

func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.inode = st.Ino
	}
	return s
}

// diff returns the events that turn old into new, sorted by instance.
func diff(old, new map[string]Instance) []driver.Event {
	var events []driver.Event
	for id, o := range old {
		n, ok := new[id]
		switch {
		case !ok:
			events = append(events, driver.Event{UUID: id, Kind: driver.MigratedAway, Reason: driver.ReasonMigrated})
		case o.running() && !n.running():
			events = append(events, driver.Event{UUID: id, Kind: driver.Stopped, Reason: driver.ReasonStopped})
		case !o.running() && n.running():
			events = append(events, driver.Event{UUID: id, Kind: driver.Started, Reason: driver.ReasonStarted})
		case n.running() && o.console() != n.console():
			events = append(events, driver.Event{UUID: id, Kind: driver.ConsoleChanged, Reason: driver.ReasonConsole})
		}
	}
	for id := range new {
		if _, ok := old[id]; !ok {
			events = append(events, driver.Event{UUID: id, Kind: driver.Started, Reason: driver.ReasonStarted})
		}
	}
	slices.SortFunc(events, func(a, b driver.Event) int { return strings.Compare(a.UUID, b.UUID) })
	return events
}
