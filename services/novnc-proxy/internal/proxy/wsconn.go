package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
)

// errTextFrame ends a session whose client sent a text message.
var errTextFrame = errors.New("client sent a text frame; binary frames only")

// wsConn presents the browser's WebSocket as the client end of a relay: the
// payloads of binary messages are the byte stream read, and every Write is
// one binary message. Text messages end the session (1003).
//
// It implements io.WriterTo so the relay copies one message at a time with a
// pooled buffer: an idle session holds no copy buffer. Reads (Read or
// WriteTo) must not be concurrent; Write may run alongside them.
//
// Close sends the close code set by setClose, or when none was set, 1000 if
// the VNC server ended the session, or nothing more if the client did.
type wsConn struct {
	ws     *websocket.Conn
	remote net.Addr

	mu      sync.Mutex
	code    closecode.Code // 0 until the proxy decides how the session ends
	reason  string
	decided chan struct{} // closed when code is set
	grace   time.Duration // see Options.RevocationGrace

	clientEnded atomic.Bool // the client closed or failed its side
	onText      func()      // the client sent a text message: end the session (1003)
	reader      io.Reader   // the message being read by Read
}

func newWSConn(ws *websocket.Conn, remote string, grace time.Duration) *wsConn {
	c := &wsConn{ws: ws, remote: stringAddr(remote), decided: make(chan struct{}), grace: grace}
	c.onText = func() { c.setClose(closecode.TextFrame, "binary frames only") }
	return c
}

// setClose records how the session ends, unless that was already decided;
// it reports whether this call decided it.
func (c *wsConn) setClose(code closecode.Code, reason string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.code != 0 {
		return false
	}
	c.code, c.reason = code, reason
	close(c.decided)
	return true
}

// closing returns the decided close code, 0 if none.
func (c *wsConn) closing() (closecode.Code, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code, c.reason
}

// next waits for the next binary message.
func (c *wsConn) next() (io.Reader, error) {
	typ, r, err := c.ws.Reader(context.Background())
	if err != nil {
		c.clientEnded.Store(true)
		if code, _ := c.closing(); code != 0 {
			return nil, io.EOF // we closed it; the client answered
		}
		switch websocket.CloseStatus(err) {
		case websocket.StatusNormalClosure, websocket.StatusGoingAway, websocket.StatusNoStatusRcvd:
			return nil, io.EOF
		}
		return nil, err
	}
	if typ != websocket.MessageBinary {
		c.onText()
		return nil, errTextFrame
	}
	return r, nil
}

// WriteTo copies the payload of every message to w until the client closes.
func (c *wsConn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		r, err := c.next()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n, err := relay.CopyPooled(w, r)
		total += n
		if err != nil {
			return total, err
		}
	}
}

// Read reads message payloads as one stream.
func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.reader == nil {
			r, err := c.next()
			if err != nil {
				return 0, err
			}
			c.reader = r
		}
		n, err := c.reader.Read(p)
		if err == io.EOF {
			c.reader = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.Write(context.Background(), websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the WebSocket with the decided code (see the type's comment).
// The close handshake waits at most 5 s for the client's answer.
func (c *wsConn) Close() error {
	code, reason := c.closing()
	if code == 0 {
		if c.clientEnded.Load() {
			return c.ws.CloseNow()
		}
		c.awaitRevocation()
		c.setClose(closecode.Normal, "the VNC server closed the connection")
		code, reason = c.closing()
	}
	return c.ws.Close(websocket.StatusCode(code), reason)
}

// awaitRevocation waits up to the grace for another end of the session
// (a revocation) to decide the close code.
func (c *wsConn) awaitRevocation() {
	if c.grace <= 0 {
		return
	}
	t := time.NewTimer(c.grace)
	defer t.Stop()
	select {
	case <-c.decided:
	case <-t.C:
	}
}

func (c *wsConn) LocalAddr() net.Addr  { return stringAddr("novnc-proxy") }
func (c *wsConn) RemoteAddr() net.Addr { return c.remote }

// Deadlines are not supported: sessions end by Close (pings, idle and
// length limits run beside the relay).
func (c *wsConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (c *wsConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (c *wsConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

type stringAddr string

func (a stringAddr) Network() string { return "websocket" }
func (a stringAddr) String() string  { return string(a) }

// closeReason fits s into a close frame (at most 123 bytes), cutting at a
// rune boundary.
func closeReason(s string) string {
	const max = 123
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
