// Package driver is how the compute agent learns where an instance's VNC
// server listens. Drivers: static (an inventory file), libvirt and qmp.
package driver

import (
	"context"
	"errors"
	"fmt"
)

// Errors every driver returns (wrapped with %w), mapped to gRPC codes once at
// the agent's RPC edge.
var (
	// ErrNotFound: this host does not run the instance (gRPC NOT_FOUND, REST 404).
	ErrNotFound = errors.New("instance not found on this host")
	// ErrNotRunning: the instance exists but is not running (FAILED_PRECONDITION, 409).
	ErrNotRunning = errors.New("instance is not running")
	// ErrNoConsole: the instance has no VNC console (INVALID_ARGUMENT, 400).
	ErrNoConsole = errors.New("instance has no vnc console")
	// ErrUnavailable: the hypervisor cannot be reached right now (UNAVAILABLE, 503).
	ErrUnavailable = errors.New("hypervisor unavailable")
)

// Console is where an instance's VNC server listens, as the proxies reach it.
type Console struct {
	Host string
	Port int32
	// InternalAccessPath, when set, is sent by the proxy as
	// "CONNECT {path} HTTP/1.1" before RFB (Nova's internal_access_path).
	InternalAccessPath string
}

// Driver answers for the instances of one host.
type Driver interface {
	// Console returns the VNC server of a running instance.
	Console(ctx context.Context, uuid string) (Console, error)
	// Instances lists the UUIDs of the instances this host runs, for the
	// agent to publish in etcd.
	Instances(ctx context.Context) ([]string, error)
}

// EventKind says what happened to an instance.
type EventKind int

const (
	// Started: the instance runs (again); publish it.
	Started EventKind = iota + 1
	// Stopped: stopped, destroyed or undefined; revoke its tokens.
	Stopped
	// MigratedAway: it now runs on another host; revoke and unpublish.
	MigratedAway
	// ConsoleChanged: its VNC host or port changed; revoke its tokens.
	ConsoleChanged
	// Deleted: it no longer exists on this host; revoke and unpublish, so
	// consoleauth answers 404 rather than 409.
	Deleted
)

func (k EventKind) String() string {
	switch k {
	case Started:
		return "started"
	case Stopped:
		return "stopped"
	case MigratedAway:
		return "migrated_away"
	case ConsoleChanged:
		return "console_changed"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("kind_%d", int(k))
}

// Reason codes of events, from registry.RevocationReasons: the agent sends
// the code with a revocation and users whose sessions end see its sentence
// ("stopped": "the instance was stopped"), never a driver's own words.
const (
	ReasonStopped  = "stopped"
	ReasonDeleted  = "deleted"
	ReasonCrashed  = "crashed"
	ReasonMigrated = "migrated"
	ReasonConsole  = "console" // its VNC host or port changed
	ReasonStarted  = "started" // started or resumed; revokes nothing
)

// Event is a lifecycle change of one instance.
type Event struct {
	UUID string
	Kind EventKind
	// Reason is a code of registry.RevocationReasons (Reason* above).
	Reason string
}

// Watcher is implemented by drivers that report lifecycle changes (libvirt,
// qmp). Watch sends events until ctx ends; it reconnects with backoff by
// itself and never closes the channel before ctx is done.
type Watcher interface {
	Watch(ctx context.Context) <-chan Event
}
