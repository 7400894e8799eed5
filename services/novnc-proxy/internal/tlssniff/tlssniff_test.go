package tlssniff

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
)

func TestTLSAndPlainShareAPort(t *testing.T) {
	cert, pool := certs.TestCert(t, "127.0.0.1")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, &tls.Config{Certificates: []tls.Certificate{cert}}, 300*time.Millisecond)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			io.WriteString(w, "tls")
		} else {
			io.WriteString(w, "plain")
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
	for _, tc := range []struct{ url, want string }{
		{"https://" + addr + "/", "tls"},
		{"http://" + addr + "/", "plain"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			resp, err := client.Get(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if string(b) != tc.want {
				t.Errorf("got %q, want %q (request must know whether it came over TLS)", b, tc.want)
			}
		})
	}

	// A connection that says nothing is closed after the timeout, and does
	// not hold up others.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Get("http://" + addr + "/"); err != nil {
		t.Fatalf("request beside a silent connection: %v", err)
	}
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent connection: got %v, want EOF", err)
	}
	t.Logf("silent connection closed after %s (handshake timeout 300ms)", time.Since(start))
}

func TestCloseEndsAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, &tls.Config{}, time.Second)
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	l.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("got a connection, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// flaky fails its first accepts as a process out of file descriptors does.
type flaky struct {
	net.Listener
	fails atomic.Int32
}

func (f *flaky) Accept() (net.Conn, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return f.Listener.Accept()
}

// An accept error other than a closed listener (EMFILE) must not stop the
// port for good: the listener backs off and serves again.
func TestAcceptErrorsDoNotStopTheListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{Listener: inner}
	f.fails.Store(3)
	l := New(f, &tls.Config{}, time.Second)
	t.Cleanup(func() { l.Close() })
	go func() {
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			defer c.Close()
			io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
			io.Copy(io.Discard, c)
		}
	}()
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if c != nil {
			c.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatalf("after 3 EMFILE failures: got %v, want the connection", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection 10s after the accept errors")
	}
}
