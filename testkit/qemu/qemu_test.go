package qemu

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
)

func TestFreeVNCPort(t *testing.T) {
	for range 20 {
		port := FreeVNCPort(t)
		if port < minFreePort || port >= maxFreePort {
			t.Fatalf("got port %d, want one in [%d, %d)", port, minFreePort, maxFreePort)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d: got %v, want it free to listen on", port, err)
		}
		l.Close()
	}
}

// TestStartVNC starts a real QEMU and reads its RFB banner; the cleanup of
// the subtest must leave the port closed.
func TestStartVNC(t *testing.T) {
	var port int
	t.Run("serves RFB", func(t *testing.T) {
		port = StartVNC(t)
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		banner := make([]byte, 12)
		if _, err := io.ReadFull(c, banner); err != nil || string(banner) != "RFB 003.008\n" {
			t.Fatalf("got banner %q (%v), want %q", banner, err, "RFB 003.008\n")
		}
	})
	if port == 0 {
		return // skipped: no QEMU outside CI
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %d still accepts after the test's cleanup, want QEMU gone", port)
	}
}

// TestStartVeNCrypt starts QEMU with tls-creds and checks that it offers
// VeNCrypt only, and that StartVNCWith passes -vnc options (password=on:
// VNC Authentication only).
func TestStartVeNCrypt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := certs.TestCA(t).WriteQEMUDir(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) int
		want  []byte // security types after the version exchange
	}{
		{"tls-creds", func(t *testing.T) int { return StartVeNCrypt(t, dir, true) }, []byte{1, 19}},
		{"password=on", func(t *testing.T) int { return StartVNCWith(t, "password=on") }, []byte{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := tc.start(t)
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			banner := make([]byte, 12)
			if _, err := io.ReadFull(c, banner); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(banner); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(tc.want))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("security types: got % x (%v), want % x", got, err, tc.want)
			}
		})
	}
}
