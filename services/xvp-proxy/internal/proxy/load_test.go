package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/loopback"
)

const (
	loadSessions = 500
	loadBytes    = 128 << 10 // each way, per session
)

// streamOf is the pseudo-random stream a seed names.
func streamOf(seed uint64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(seedBytes(seed)), loadBytes)
}

func seedBytes(seed uint64) (s [32]byte) {
	binary.BigEndian.PutUint64(s[:], seed)
	return s
}

// checksumServer reads an 8-byte seed, then at once sends the seed's stream
// while hashing everything else the client sends; after the client's EOF it
// sends the SHA-256 of what it received and closes.
func checksumServer(t *testing.T) string {
	t.Helper()
	return loopback.Serve(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(60 * time.Second))
		var seed [8]byte
		if _, err := io.ReadFull(c, seed[:]); err != nil {
			return
		}
		sent := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, streamOf(binary.BigEndian.Uint64(seed[:])))
			sent <- err
		}()
		h := sha256.New()
		_, rerr := io.Copy(h, c)
		if err := <-sent; err != nil || rerr != nil {
			return
		}
		c.Write(h.Sum(nil))
	})
}

// loadSession runs one session through the proxy: it sends loadBytes of its
// own stream and checks the server's stream and the server's digest of
// what it sent. It never calls t.Fatal: it runs in a goroutine.
func loadSession(proxyAddr, token string, seed uint64) error {
	c, err := net.DialTimeout("tcp", proxyAddr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(45 * time.Second))
	var head [8]byte
	binary.BigEndian.PutUint64(head[:], seed)
	req := "CONNECT /console?token=" + token + " HTTP/1.1\r\n\r\n"
	// The seed is pipelined right after the head.
	if _, err := c.Write(append([]byte(req), head[:]...)); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	ok := make([]byte, len(replyOK))
	if _, err := io.ReadFull(br, ok); err != nil || !bytes.Equal(ok, replyOK) {
		return fmt.Errorf("answer %q (%v)", ok, err)
	}

	clientSum := make(chan []byte, 1)
	werr := make(chan error, 1)
	go func() {
		h := sha256.New()
		_, err := io.Copy(io.MultiWriter(c, h), streamOf(^seed))
		clientSum <- h.Sum(nil)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()

	got := sha256.New()
	if _, err := io.CopyN(got, br, loadBytes); err != nil {
		return fmt.Errorf("reading the server's stream: %w", err)
	}
	want := sha256.New()
	io.Copy(want, streamOf(seed))
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("server to client: checksum mismatch")
	}
	digest, err := io.ReadAll(br)
	if err != nil {
		return fmt.Errorf("reading the server's digest: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if sum := <-clientSum; !bytes.Equal(digest, sum) {
		return fmt.Errorf("client to server: server's checksum %x, want %x", digest, sum)
	}
	return nil
}

// TestConcurrentSessionsRelayEveryByte runs 500 sessions at once through
// one proxy, each moving 128 KiB each way, and checks every byte both ways:
// with the kernel's splice (no idle timeout) and with idle tracking.
func TestConcurrentSessionsRelayEveryByte(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for _, tc := range []struct {
		name string
		idle time.Duration
	}{{"splice", 0}, {"idle tracked", time.Minute}} {
		t.Run(tc.name, func(t *testing.T) {
			// A burst under the race detector on a loaded machine takes
			// long: the limit only bounds a hang. Each client half-closes
			// long before the server's stream is through, and a session
			// may then wait for the CPU longer than the default linger.
			w := newWorld(t, func(c *worldConfig) {
				c.proxy.HandshakeTimeout, c.core.HalfCloseLinger = 2*time.Minute, 2*time.Minute
				c.core.IdleTimeout = tc.idle
			})
			backendAddr := checksumServer(t)
			for i := range loadSessions {
				w.auth.add(fmt.Sprintf("tok-%d", i), fmt.Sprintf("inst-%d", i), backendAddr)
			}
			start := time.Now()
			errs := make(chan error, loadSessions)
			var wg sync.WaitGroup
			for i := range loadSessions {
				wg.Go(func() {
					if err := loadSession(w.addr, fmt.Sprintf("tok-%d", i), uint64(i)+1); err != nil {
						errs <- fmt.Errorf("session %d: %w", i, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			n := 0
			for err := range errs {
				if n++; n <= 5 {
					t.Error(err)
				}
			}
			if n > 0 {
				t.Fatalf("%d of %d sessions failed", n, loadSessions)
			}
			d := time.Since(start)
			t.Logf("%d sessions, %d KiB each way each, in %v (%.0f MiB/s through the proxy)",
				loadSessions, loadBytes>>10, d.Round(time.Millisecond), float64(2*loadSessions*loadBytes)/d.Seconds()/(1<<20))
			w.waitSessions(t, 0)
		})
	}
}
