package loopback

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"strconv"
	"testing"
)

// Port range of ListenRestartable: below the kernel's ephemeral range
// (32768 and up on Linux), where a listener on port 0 and every outgoing
// connection take their ports, and below testkit/keystone's and
// testkit/qemu's ranges (12000 and up).
const (
	minRestartablePort = 10000
	maxRestartablePort = 12000
)

// ListenRestartable listens on ip (e.g. "127.0.0.1") at a port no outgoing
// connection will take, for a server a test kills and restarts on the same
// address: a port from the ephemeral range may meanwhile be the local port
// of one of the test's own connections, and the restart then fails with
// "address already in use".
func ListenRestartable(t testing.TB, ip string) net.Listener {
	t.Helper()
	for range 100 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		port := minRestartablePort + int(binary.BigEndian.Uint32(b[:])%(maxRestartablePort-minRestartablePort))
		if l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port))); err == nil {
			return l
		}
	}
	t.Fatalf("no free port in [%d, %d) on %s after 100 tries", minRestartablePort, maxRestartablePort, ip)
	return nil
}
