package backend

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// serveOnce accepts one connection, reads a CONNECT head, answers reply and
// returns the head it read.
func serveOnce(t *testing.T, reply string) (addr string, heads <-chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		head, _ := readHead(bufio.NewReader(c))
		ch <- head
		io.WriteString(c, reply)
		io.Copy(io.Discard, c)
	}()
	return l.Addr().String(), ch
}

func split(t *testing.T, addr string) (string, int32) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := net.LookupPort("tcp", port)
	return host, int32(p)
}

func TestConnectPath(t *testing.T) {
	addr, heads := serveOnce(t, "HTTP/1.1 200 OK\r\nX: y\r\n\r\nRFB 003.008\n")
	host, port := split(t, addr)
	conn, err := Dialer{Timeout: 2 * time.Second}.Dial(context.Background(), host, port, "/console?token=x")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, want := <-heads, "CONNECT /console?token=x HTTP/1.1\r\n\r\n"; got != want {
		t.Errorf("head sent: got %q, want %q", got, want)
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "RFB 003.008\n" {
		t.Fatalf("bytes after the 200 head: got %q (%v), want the RFB version", buf, err)
	}
	if _, ok := conn.(interface{ CloseWrite() error }); !ok {
		t.Error("buffered conn lost CloseWrite")
	}
}

func TestConnectRefusals(t *testing.T) {
	tests := []struct {
		name, reply, want string
	}{
		{"not 200", "HTTP/1.1 403 Forbidden\r\n\r\n", `"HTTP/1.1 403 Forbidden" to CONNECT, want 200`},
		{"not HTTP", "RFB 003.008\n\r\n", "want 200"},
		{"head too long", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: y\r\n", 1000), "longer than 4096"},
		{"closed early", "HTTP/1.1 200 OK\r\n", "reading answer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := serveOnceClosing(t, tc.reply)
			host, port := split(t, addr)
			_, err := Dialer{Timeout: 2 * time.Second}.Dial(context.Background(), host, port, "/p")
			if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrUnreachable containing %q", err, tc.want)
			}
		})
	}
}

// serveOnceClosing answers reply and closes at once.
func serveOnceClosing(t *testing.T, reply string) (string, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		readHead(bufio.NewReader(c))
		io.WriteString(c, reply)
		c.Close()
	}()
	return l.Addr().String(), nil
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port := split(t, l.Addr().String())
	l.Close()
	_, err = Dialer{Timeout: time.Second}.Dial(context.Background(), host, port, "")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("got %v, want ErrUnreachable", err)
	}
}

func TestSilentBackEndTimesOut(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	host, port := split(t, l.Addr().String())
	start := time.Now()
	_, err = Dialer{Timeout: 300 * time.Millisecond}.Dial(context.Background(), host, port, "/p")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("got %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v, want about the 300ms timeout", d)
	}
}
