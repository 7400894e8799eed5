//go:build !unix

package backend

import (
	"context"
	"net"
	"time"
)

// awaitGreeting does not wait: peeking at a socket without reading it
// needs a Unix poller (see greeting_unix.go).
func awaitGreeting(context.Context, net.Conn, time.Duration) error { return nil }
