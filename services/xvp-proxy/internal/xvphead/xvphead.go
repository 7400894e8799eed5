// Package xvphead reads and parses the one HTTP request head an XVP client
// (Nova's Java VNC viewer) sends before it speaks raw RFB:
//
//	CONNECT /console?token=T HTTP/1.1\r\n
//	Any-Header: ignored\r\n
//	\r\n
//
// It promises:
//   - Read never consumes more than MaxSize bytes from its reader, and hands
//     back the bytes it read past the head (a client may pipeline RFB right
//     after it) so the caller can forward them;
//   - a request line that cannot be valid fails as soon as it is complete,
//     without waiting for the rest of the head;
//   - every error wraps exactly one of the sentinels below, which the proxy
//     maps to a status line;
//   - a returned Head has method CONNECT or GET, protocol HTTP/1.0 or
//     HTTP/1.1, and a non-empty token of at most MaxTokenLen printable ASCII
//     bytes (what consoleauth mints), so it is safe to pass on.
//
// Lines end in CRLF; a bare LF is accepted too (RFC 9112 section 2.2 allows
// it), so the head ends at the first empty line either way. Header lines are
// not interpreted: the token travels in the request target only.
package xvphead

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
)

// MaxSize caps a request head, empty line included.
const MaxSize = 4096

// MaxTokenLen caps a token; consoleauth's are far shorter.
const MaxTokenLen = 512

// Reasons a head is refused. Every error from Read and Parse wraps one.
var (
	// ErrEmpty: the client closed before sending a byte (a port probe).
	ErrEmpty = errors.New("connection closed before a request")
	// ErrIncomplete: the client stopped (EOF or error) before the empty line.
	ErrIncomplete = errors.New("request head incomplete")
	// ErrTooLong: no empty line within MaxSize bytes.
	ErrTooLong = errors.New("request head too long")
	// ErrMalformed: not an HTTP/1.x request line, or a bad target or token.
	ErrMalformed = errors.New("malformed request")
	// ErrMethod: a well-formed request with a method other than CONNECT or GET.
	ErrMethod = errors.New("method not allowed")
	// ErrNoToken: a well-formed request without a token parameter.
	ErrNoToken = errors.New("no token in request")
)

// Head is a parsed request head.
type Head struct {
	Method string // "CONNECT" or "GET"
	Target string // the request target as sent, e.g. "/console?token=T"; it holds the token
	Proto  string // "HTTP/1.0" or "HTTP/1.1"
	Token  string // the target's token query parameter
}

// buffers are Read's: a head is read into one and parsed into strings, so
// a session does not keep (or allocate) MaxSize bytes for it.
var buffers = sync.Pool{New: func() any { return new([MaxSize]byte) }}

// Read reads one request head from r and parses it. It reads at most MaxSize
// bytes; rest is what it read after the head, to be relayed. On a read
// error (a deadline, say) the error wraps ErrIncomplete or ErrEmpty and the
// read error.
func Read(r io.Reader) (h Head, rest []byte, err error) {
	pooled := buffers.Get().(*[MaxSize]byte)
	defer buffers.Put(pooled)
	buf := pooled[:]
	n := 0
	lineChecked := false
	for {
		m, rerr := r.Read(buf[n:])
		from := max(n-2, 0) // an end marker may straddle two reads
		n += m
		if !lineChecked {
			if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
				lineChecked = true
				if _, err := parseRequestLine(trimCR(buf[:i])); err != nil {
					return Head{}, nil, err
				}
			} else if err := checkMethodPrefix(buf[:n]); err != nil {
				return Head{}, nil, err
			}
		}
		if end := headEnd(buf[:n], from); end >= 0 {
			h, err := Parse(buf[:end])
			if err != nil {
				return Head{}, nil, err
			}
			return h, bytes.Clone(buf[end:n]), nil // buf goes back to the pool
		}
		if n == MaxSize {
			return Head{}, nil, fmt.Errorf("%w: no empty line in %d bytes", ErrTooLong, MaxSize)
		}
		if rerr != nil {
			if n == 0 {
				return Head{}, nil, fmt.Errorf("%w: %w", ErrEmpty, rerr)
			}
			return Head{}, nil, fmt.Errorf("%w after %d bytes: %w", ErrIncomplete, n, rerr)
		}
	}
}

// headEnd returns the length of the head in b (through its empty line), or
// -1 when b holds no complete head; it looks for the end at from or later.
func headEnd(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' || i == 0 {
			continue
		}
		// b[i] ends a line; the line before it is empty if it is "" or "\r".
		if b[i-1] == '\n' {
			return i + 1
		}
		if b[i-1] == '\r' && i >= 2 && b[i-2] == '\n' {
			return i + 1
		}
	}
	return -1
}

// Parse parses a complete head: a request line, header lines, and the empty
// line that ends it (with CRLF or LF line ends).
func Parse(head []byte) (Head, error) {
	if headEnd(head, 0) != len(head) {
		return Head{}, fmt.Errorf("%w: head does not end at its first empty line", ErrMalformed)
	}
	line, _, _ := bytes.Cut(head, []byte{'\n'})
	h, err := parseRequestLine(trimCR(line))
	if err != nil {
		return Head{}, err
	}
	h.Token, err = token(h.Target)
	if err != nil {
		return Head{}, err
	}
	return h, nil
}

// parseRequestLine parses "METHOD SP TARGET SP HTTP/1.x".
func parseRequestLine(line []byte) (Head, error) {
	parts := strings.Split(string(line), " ")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return Head{}, fmt.Errorf("%w: want \"METHOD TARGET HTTP/1.x\"", ErrMalformed)
	}
	h := Head{Method: parts[0], Target: parts[1], Proto: parts[2]}
	if h.Proto != "HTTP/1.1" && h.Proto != "HTTP/1.0" {
		return Head{}, fmt.Errorf("%w: protocol is not HTTP/1.0 or HTTP/1.1", ErrMalformed)
	}
	if !isMethod(h.Method) {
		return Head{}, fmt.Errorf("%w: bad method", ErrMalformed)
	}
	if !printable(h.Target) {
		return Head{}, fmt.Errorf("%w: bad request target", ErrMalformed)
	}
	// GET is accepted as well as CONNECT: Nova's nova-xvpvncproxy was a WSGI
	// application that took the token from the query of any request, and
	// launchers written against it open the xvpvncproxy_base_url (an http://
	// URL) with a plain GET before taking the socket over. Either way the
	// answer is the same "200 OK" followed by raw RFB. Every other method is
	// refused (405): a POST or HEAD here is not an XVP client.
	if h.Method != "CONNECT" && h.Method != "GET" {
		return Head{}, fmt.Errorf("%w: %s", ErrMethod, h.Method)
	}
	return h, nil
}

// checkMethodPrefix fails early on bytes that cannot start a request line
// (binary garbage, or an RFB client that skipped the preamble): a method is
// upper-case letters followed by a space.
func checkMethodPrefix(b []byte) error {
	for i, c := range b {
		if c == ' ' && i > 0 {
			return nil
		}
		if c < 'A' || c > 'Z' {
			return fmt.Errorf("%w: bad method", ErrMalformed)
		}
	}
	return nil
}

// isMethod reports whether m is an upper-case token, as every registered
// HTTP method is.
func isMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return false
		}
	}
	return m != ""
}

// token returns the token query parameter of target, which may be in origin
// form (/console?token=T) or absolute form (http://host/console?token=T).
func token(target string) (string, error) {
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return "", fmt.Errorf("%w: bad request target", ErrMalformed)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "", fmt.Errorf("%w: bad query", ErrMalformed)
	}
	t := q.Get("token")
	if t == "" {
		return "", ErrNoToken
	}
	if len(t) > MaxTokenLen || !printable(t) {
		return "", fmt.Errorf("%w: bad token", ErrMalformed)
	}
	return t, nil
}

// printable reports whether s is visible ASCII (no space, no control bytes).
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func trimCR(b []byte) []byte { return bytes.TrimSuffix(b, []byte{'\r'}) }
