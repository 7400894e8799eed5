//go:build unix

package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

// onlyWriter hides io.ReaderFrom, as the relay's writers do.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

func TestLazyTCPCopiesEverythingThenEOF(t *testing.T) {
	a, b := tcpPair(t)
	lazy := lazy(b)
	if _, ok := lazy.(*lazyTCP); !ok {
		t.Fatalf("got %T, want *lazyTCP", lazy)
	}
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	go func() {
		// Bursts and pauses, so the copy both drains and waits.
		for off := 0; off < len(data); {
			n := min(len(data)-off, 100<<10)
			a.Write(data[off : off+n])
			off += n
			time.Sleep(time.Millisecond)
		}
		a.CloseWrite()
	}()
	var got bytes.Buffer
	n, err := io.Copy(onlyWriter{&got}, lazy)
	if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("got %d bytes, %v; want the %d sent and EOF", n, err, len(data))
	}
}

func TestLazyTCPReturnsWhenClosed(t *testing.T) {
	_, b := tcpPair(t)
	lazy := lazy(b)
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, lazy); done <- err }()
	time.Sleep(20 * time.Millisecond)
	lazy.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("got nil, want the closed-connection error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("copy did not return after Close")
	}
}

// accounted wraps a TCP connection the way a listener's accounting wrapper
// does: reads pass through untouched.
type accounted struct{ *net.TCPConn }

func (a accounted) TransparentTCP() *net.TCPConn { return a.TCPConn }

func TestLazySeesThroughTransparentWrappers(t *testing.T) {
	_, b := tcpPair(t)
	if _, ok := lazy(accounted{b}).(*lazyTCP); !ok {
		t.Fatal("a TransparentTCP wrapper: got a plain copy, want the lazy TCP reader")
	}
	type opaque struct{ net.Conn }
	if _, ok := lazy(opaque{b}).(*lazyTCP); ok {
		t.Fatal("a wrapper that does not say it is transparent: got the lazy TCP reader, want the wrapper")
	}
}
