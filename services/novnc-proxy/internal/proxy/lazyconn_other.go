//go:build !unix

package proxy

import "net"

// lazyBackend returns c: waiting for readability without a buffer needs a
// Unix poller.
func lazyBackend(c net.Conn) net.Conn { return c }
