// Package backend dials the VNC server a console token points at, the only
// address a proxy ever dials (no open relay). When the token carries an
// internal_access_path, it first sends "CONNECT {path} HTTP/1.1" and
// requires a 200 answer (Nova accepted any status).
//
// With Dialer.GreetingTimeout set it also waits for the server's first
// bytes (an RFB server speaks first), without reading them, and dials
// again when none come: a listener whose accept queue overflowed (QEMU's
// holds one connection) completes some handshakes with SYN cookies and then
// drops them, leaving a connection that never carries a byte.
package backend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	// GreetingTimeout is how long a new connection (after CONNECT, if any)
	// may stay silent: past it, it is closed and dialled again, up to
	// GreetingAttempts connections in all. 0 does not wait for the server
	// to speak (for back ends that do not speak first).
	GreetingTimeout time.Duration
	// OnSilent, if set, is called each time a connection stayed silent
	// for GreetingTimeout and was closed (attempt counts from 1).
	OnSilent func(attempt int)
}

// GreetingOption is the proxies' setting of Dialer.GreetingTimeout:
// [vncgate] server_greeting_timeout, in seconds.
const GreetingOption = "server_greeting_timeout"

// DefaultGreetingTimeout is GreetingOption's default: a VNC server greets
// within a millisecond on a healthy host, and 3 silent connections of 2 s
// still end within the proxies' 10 s handshake_timeout.
const DefaultGreetingTimeout = 2 * time.Second

// GreetingHelp describes GreetingOption.
const GreetingHelp = "how long a new VNC server connection may stay silent before the proxy closes it and connects again, 3 connections in all " +
	"(an RFB server speaks first; a connection lost to the server's full accept queue never does) (0: do not wait)"

// CheckGreetingTimeout refuses a GreetingOption that leaves no time within
// the proxy's handshake_timeout to replace a silent connection.
func CheckGreetingTimeout(greeting, handshake time.Duration) error {
	if greeting > 0 && handshake > 0 && greeting >= handshake {
		return fmt.Errorf("%s %v: want less than handshake_timeout (%v), or a silent connection can never be replaced (0 turns the wait off)",
			GreetingOption, greeting, handshake)
	}
	return nil
}

// GreetingAttempts is how many connections Dial opens to a server that
// accepts but stays silent before it gives up.
const GreetingAttempts = 3

// ErrSilent is the cause (wrapped with ErrUnreachable) when every attempt
// was accepted but none got a byte within Dialer.GreetingTimeout.
var ErrSilent = errors.New("the VNC server accepted the connection but never spoke")

// retrySpread bounds the random pause before another attempt, so that the
// silent connections of one burst do not all come back in the same instant
// and overflow the same accept queue again.
const retrySpread = 200 * time.Millisecond

// Dial connects to host:port and, if path is not empty, performs the CONNECT
// exchange; with GreetingTimeout it then waits for the server's first
// bytes. Bytes the back end sends after its 200 head are kept: the
// returned conn reads them first, as it reads the greeting it waited for.
// Every error wraps ErrUnreachable.
func (d Dialer) Dial(ctx context.Context, host string, port int32, path string) (net.Conn, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	if d.GreetingTimeout <= 0 {
		return d.dial(ctx, addr, path)
	}
	for attempt := 1; ; attempt++ {
		conn, err := d.dial(ctx, addr, path)
		if err != nil {
			return nil, err // refused or failed: not a silent server, no retry
		}
		err = awaitGreeting(ctx, conn, d.GreetingTimeout)
		if err == nil {
			return conn, nil
		}
		conn.Close()
		if !errors.Is(err, ErrSilent) {
			return nil, fmt.Errorf("%w: %s: waiting for the VNC server's first bytes: %v", ErrUnreachable, addr, err)
		}
		if d.OnSilent != nil {
			d.OnSilent(attempt)
		}
		if attempt == GreetingAttempts {
			return nil, fmt.Errorf("%w: %s: %w (no byte within %v, %d connections)", ErrUnreachable, addr, err, d.GreetingTimeout, attempt)
		}
		pause := time.NewTimer(rand.N(retrySpread))
		select {
		case <-ctx.Done():
			pause.Stop()
			return nil, fmt.Errorf("%w: %s: %w (no byte within %v on %d connections, then %v)", ErrUnreachable, addr, ErrSilent, d.GreetingTimeout, attempt, ctx.Err())
		case <-pause.C:
		}
	}
}

// dial is one TCP connection to addr and its CONNECT exchange.
func (d Dialer) dial(ctx context.Context, addr, path string) (net.Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
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
