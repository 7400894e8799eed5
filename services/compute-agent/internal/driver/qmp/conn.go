package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one QMP session on a monitor socket: greeting read and
// capabilities negotiated, a reader goroutine routing replies to their
// commands by id and queueing asynchronous events.
//
// QEMU serves one client per monitor socket at a time (a second client
// waits, silent, until the first leaves), so the driver keeps a single conn
// per instance and shares it.
type conn struct {
	nc     net.Conn
	events chan message  // asynchronous events, in order
	done   chan struct{} // closed when the reader has stopped
	quit   chan struct{} // closed by close: stop delivering events
	// down is set from a SHUTDOWN event until a RESUME: the guest is gone
	// (QEMU is exiting, or stays with -no-shutdown) though the session
	// still answers.
	down atomic.Bool

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	pending map[uint64]chan message // nil once done
	nextID  uint64
	err     error // why the session ended; set before done closes
	closed  bool
}

// message is any QMP message: greeting, reply or event.
type message struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	ID     *uint64         `json:"id"`
}

// Error is an error reply from QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// errClosed is returned by execute once the session has ended.
var errClosed = errors.New("qmp session closed")

// MaxMessageSize caps one QMP message (greeting, reply or event) in bytes.
// The agent's commands get replies of a few hundred bytes; a monitor that
// sends more (a broken or hostile QEMU) ends the session with
// ErrMessageTooLarge rather than growing the agent's memory.
const MaxMessageSize = 256 << 10

// ErrMessageTooLarge: the monitor sent a message over MaxMessageSize.
var ErrMessageTooLarge = fmt.Errorf("qmp message larger than %d bytes", MaxMessageSize)

// capReader gives a json.Decoder at most n more bytes; reset before each
// message, it bounds what one message may make the decoder buffer (up to
// n bytes beyond what it already held).
type capReader struct {
	r io.Reader
	n int
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, ErrMessageTooLarge
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= n
	return n, err
}

// decoder reads QMP messages of at most MaxMessageSize bytes each.
type decoder struct {
	limit *capReader
	dec   *json.Decoder
}

func newDecoder(r io.Reader) *decoder {
	limit := &capReader{r: r}
	return &decoder{limit: limit, dec: json.NewDecoder(limit)}
}

// Decode reads the next message into v.
func (d *decoder) Decode(v any) error {
	d.limit.n = MaxMessageSize
	return d.dec.Decode(v)
}

// dial connects to the monitor socket at path and negotiates capabilities
// within timeout.
func dial(ctx context.Context, path string, timeout time.Duration) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	// The greeting and the capabilities reply must come within the
	// deadline: a QEMU that is hung, or whose monitor another client holds,
	// accepts the connection but says nothing.
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()

	dec := newDecoder(nc)
	// QEMU may flush events queued for the previous client before the
	// greeting: skip them.
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			nc.Close()
			return nil, fmt.Errorf("read qmp greeting: %w", err)
		}
		var g message
		if json.Unmarshal(raw, &g) != nil || (g.QMP == nil && g.Event == "") {
			nc.Close()
			return nil, fmt.Errorf("read qmp greeting: not a qmp monitor: got %.100s", raw)
		}
		if g.QMP != nil {
			break
		}
	}
	if _, err := nc.Write([]byte(`{"execute":"qmp_capabilities","id":0}` + "\n")); err != nil {
		nc.Close()
		return nil, fmt.Errorf("send qmp_capabilities: %w", err)
	}
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			nc.Close()
			return nil, fmt.Errorf("read qmp_capabilities reply: %w", err)
		}
		if m.Error != nil {
			nc.Close()
			return nil, fmt.Errorf("qmp_capabilities: %w", m.Error)
		}
		if m.Return != nil {
			break
		}
	}
	if !stop() {
		nc.Close()
		return nil, fmt.Errorf("qmp handshake: %w", ctx.Err())
	}
	nc.SetDeadline(time.Time{})

	c := &conn{
		nc:      nc,
		events:  make(chan message, 32),
		done:    make(chan struct{}),
		quit:    make(chan struct{}),
		pending: map[uint64]chan message{},
	}
	go c.read(dec)
	return c, nil
}

// read routes incoming messages until the socket fails.
func (c *conn) read(dec *decoder) {
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			switch m.Event {
			case "SHUTDOWN":
				c.down.Store(true)
			case "RESUME":
				c.down.Store(false)
			}
			select {
			case c.events <- m:
			case <-c.quit:
			}
		case m.ID != nil:
			c.mu.Lock()
			ch := c.pending[*m.ID]
			delete(c.pending, *m.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- m // buffered
			}
		}
	}
	c.mu.Lock()
	c.err = err
	c.pending = nil
	c.mu.Unlock()
	c.nc.Close()
	close(c.done)
}

// execute runs a QMP command without arguments and decodes its return
// value into out (when not nil).
func (c *conn) execute(ctx context.Context, command string, out any) error {
	ch := make(chan message, 1)
	c.mu.Lock()
	if c.pending == nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%s: %w: %w", command, errClosed, err)
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	req, err := json.Marshal(struct {
		Execute string `json:"execute"`
		ID      uint64 `json:"id"`
	}{command, id})
	if err != nil {
		return err
	}
	c.wmu.Lock()
	if deadline, ok := ctx.Deadline(); ok {
		c.nc.SetWriteDeadline(deadline)
	} else {
		c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	_, err = c.nc.Write(append(req, '\n'))
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("%s: %w", command, err)
	}

	var m message
	select {
	case m = <-ch:
	case <-c.done:
		select {
		case m = <-ch: // the reply came just before the end
		default:
			c.mu.Lock()
			why := c.err
			c.mu.Unlock()
			return fmt.Errorf("%s: %w: %w", command, errClosed, why)
		}
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("%s: %w", command, ctx.Err())
	}
	if m.Error != nil {
		return fmt.Errorf("%s: %w", command, m.Error)
	}
	if out != nil {
		if err := json.Unmarshal(m.Return, out); err != nil {
			return fmt.Errorf("%s: decode reply: %w", command, err)
		}
	}
	return nil
}

func (c *conn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// alive reports whether the session still runs.
func (c *conn) alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// close ends the session; done closes once the reader has stopped.
func (c *conn) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.quit)
	}
	c.mu.Unlock()
	c.nc.Close()
}
