//go:build !unix

package relay

import "net"

// lazy returns c: waiting for readability without a buffer needs a
// Unix poller.
func lazy(c net.Conn) net.Conn { return c }
