// Package backend dials the VNC server a console token points at, the only
// address a proxy ever dials (no open relay). When the token carries an
// internal_access_path, it first sends "CONNECT {path} HTTP/1.1" and
// requires a 200 answer (Nova accepted any status).
package backend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrUnreachable wraps every failure to reach the VNC server.
var ErrUnreachable = errors.New("vnc server unreachable")

// MaxHead caps the back end's answer to CONNECT.
const MaxHead = 4096

// Dialer dials VNC servers.
type Dialer struct {
	// Timeout bounds the TCP dial and the CONNECT exchange.
	Timeout time.Duration
	// KeepAlive is the TCP keep-alive period; 0 uses Go's default (15 s).
	KeepAlive time.Duration
}

// Dial connects to host:port and, if path is not empty, performs the CONNECT
// exchange. Bytes the back end sends after its 200 head are kept: the
// returned conn reads them first.
func (d Dialer) Dial(ctx context.Context, host string, port int32, path string) (net.Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	nd := net.Dialer{KeepAlive: d.KeepAlive}
	conn, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, addr, err)
	}
	if path == "" {
		return conn, nil
	}
	c, err := connect(ctx, conn, path)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, addr, err)
	}
	return c, nil
}

func connect(ctx context.Context, conn net.Conn, path string) (net.Conn, error) {
	if strings.ContainsAny(path, " \r\n") {
		return nil, fmt.Errorf("bad internal_access_path %q", path)
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\n\r\n", path); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(conn, MaxHead)
	head, err := readHead(br)
	if err != nil {
		return nil, err
	}
	status, _, _ := strings.Cut(head, "\r\n")
	proto, rest, _ := strings.Cut(status, " ")
	code, _, _ := strings.Cut(rest, " ")
	if !strings.HasPrefix(proto, "HTTP/1.") || code != strconv.Itoa(http.StatusOK) {
		return nil, fmt.Errorf("back end answered %q to CONNECT, want 200", status)
	}
	if br.Buffered() == 0 {
		return conn, nil
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// readHead reads up to the empty line that ends an HTTP head, at most MaxHead bytes.
func readHead(br *bufio.Reader) (string, error) {
	var head strings.Builder
	for {
		line, err := br.ReadSlice('\n')
		head.Write(line)
		if head.Len() > MaxHead || errors.Is(err, bufio.ErrBufferFull) {
			return "", fmt.Errorf("answer to CONNECT longer than %d bytes", MaxHead)
		}
		if err != nil {
			return "", fmt.Errorf("reading answer to CONNECT: %w", err)
		}
		if string(line) == "\r\n" || string(line) == "\n" {
			return head.String(), nil
		}
	}
}

// bufferedConn reads what the head's reader already buffered before the conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite and CloseRead keep the TCP half-close the relay relies on.
func (c *bufferedConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }
func (c *bufferedConn) CloseRead() error  { return c.Conn.(*net.TCPConn).CloseRead() }
