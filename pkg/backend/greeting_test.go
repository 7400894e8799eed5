//go:build unix

package backend

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/loopback"
)

const rfbVersion = "RFB 003.008\n"

// greetingTimeout is short so the silent cases end soon; every wait in
// these tests is on an event, this only bounds the silence.
const greetingTimeout = 300 * time.Millisecond

// readVersion requires the RFB version as the first bytes of c.
func readVersion(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(rfbVersion))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != rfbVersion {
		t.Fatalf("first bytes: got %q (%v), want the server's RFB version %q", buf, err, rfbVersion)
	}
}

func TestGreetingStaysForTheRelay(t *testing.T) {
	host, port := split(t, loopback.Serve(t, func(c net.Conn) {
		io.WriteString(c, rfbVersion)
		io.Copy(c, c)
	}))
	conn, err := Dialer{GreetingTimeout: time.Minute}.Dial(context.Background(), host, port, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The relay splices a *net.TCPConn: waiting must not wrap it.
	if _, ok := conn.(*net.TCPConn); !ok {
		t.Errorf("conn: got %T, want *net.TCPConn", conn)
	}
	readVersion(t, conn)
	io.WriteString(conn, "after")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "after" {
		t.Errorf("echo after the greeting: got %q (%v)", buf, err)
	}
}

// A server that accepts and stays silent (a connection its accept queue
// dropped looks the same to the client) is left for a new connection.
func TestSilentConnectionRedialled(t *testing.T) {
	for _, path := range []string{"", "/console?token=x"} {
		t.Run("path="+path, func(t *testing.T) {
			var accepts atomic.Int32
			firstClosed := make(chan struct{})
			addr := loopback.Serve(t, func(c net.Conn) {
				if path != "" {
					readHead(bufio.NewReader(c))
					io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
				}
				if accepts.Add(1) == 1 {
					io.Copy(io.Discard, c) // silent until the dialer gives up on it
					close(firstClosed)
					return
				}
				io.WriteString(c, rfbVersion)
				io.Copy(io.Discard, c)
			})
			host, port := split(t, addr)
			conn, err := Dialer{GreetingTimeout: greetingTimeout}.Dial(context.Background(), host, port, path)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			readVersion(t, conn)
			select {
			case <-firstClosed:
			case <-time.After(10 * time.Second):
				t.Fatal("the silent connection was not closed")
			}
		})
	}
}

// A listener that never accepts: every connect completes into its queue
// and never gets a byte. Dial gives up after GreetingAttempts connections,
// each closed, with an error that says what happened.
func TestNeverSpeaksIsUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, port := split(t, l.Addr().String())
	_, err = Dialer{GreetingTimeout: greetingTimeout}.Dial(context.Background(), host, port, "")
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrSilent) {
		t.Fatalf("got %v, want ErrUnreachable and ErrSilent", err)
	}
	for _, want := range []string{"accepted the connection but never spoke", "3 connections", l.Addr().String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q: want it to contain %q", err, want)
		}
	}
	// Exactly GreetingAttempts connections wait in the queue, each closed
	// by the dialer.
	l.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond)) // the queue is full already: this only ends the count
	queued := 0
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		queued++
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("connection %d: got %d bytes (%v), want EOF: the dialer closes what it gives up", queued, n, err)
		}
		c.Close()
	}
	if queued != GreetingAttempts {
		t.Errorf("connections opened: got %d, want %d", queued, GreetingAttempts)
	}
}

// The wait ends with ctx: the client leaving cancels it, the handshake
// deadline ends it.
func TestGreetingWaitEndsWithContext(t *testing.T) {
	accepted := make(chan struct{}, 2)
	addr := loopback.Serve(t, func(c net.Conn) {
		accepted <- struct{}{}
		io.Copy(io.Discard, c)
	})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-accepted
		cancel()
	}()
	if err := awaitGreeting(ctx, conn, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: got %v, want context.Canceled", err)
	}

	host, port := split(t, addr)
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = Dialer{GreetingTimeout: time.Hour}.Dial(ctx, host, port, "")
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "waiting for the VNC server's first bytes: context deadline exceeded") {
		t.Fatalf("deadline: got %v, want ErrUnreachable saying the wait reached the deadline", err)
	}
}

// An EOF is an answer too: the relay reports it as the server closing.
func TestClosedBeforeGreetingIsHandedOver(t *testing.T) {
	host, port := split(t, loopback.Serve(t, func(net.Conn) {}))
	conn, err := Dialer{GreetingTimeout: time.Minute}.Dial(context.Background(), host, port, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("read: got %d bytes (%v), want EOF", n, err)
	}
}

// Without GreetingTimeout (the zero Dialer) nothing waits: back ends that
// do not speak first still work.
func TestNoGreetingWaitByDefault(t *testing.T) {
	host, port := split(t, loopback.Echo(t))
	conn, err := Dialer{}.Dial(context.Background(), host, port, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Errorf("echo: got %q (%v)", buf, err)
	}
}
