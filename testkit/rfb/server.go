package rfb

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("rfb: server closed")

// Options configure a Server. Zero fields take the defaults shown.
type Options struct {
	Width, Height int    // 640 x 480; at most 65535 each
	Name          string // "vncgate demo"
	// FrameInterval is how often the picture changes: 100ms.
	FrameInterval time.Duration
	// HandshakeTimeout bounds the version, security and init exchange: 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds writing one update: 30s.
	WriteTimeout time.Duration
	// MaxEvents is how many key, pointer and cut-text events of each kind
	// are kept (the oldest go first): 4096.
	MaxEvents int
	// MaxCutText is how many bytes of one ClientCutText are kept: 64 KiB.
	MaxCutText int
	// Logger receives connection logs; nil discards them.
	Logger *slog.Logger
	// VeNCrypt, when set, makes the server offer VeNCrypt with X509None
	// only, as QEMU with tls-creds does, instead of None.
	VeNCrypt *VeNCrypt
}

// KeyEvent is a KeyEvent message the server received.
type KeyEvent struct {
	Conn   uint64 // which connection sent it, numbered from 1 in accept order
	Down   bool
	Keysym uint32
}

// PointerEvent is a PointerEvent message the server received.
type PointerEvent struct {
	Conn    uint64
	Buttons uint8 // bit 0 is the left button
	X, Y    uint16
}

// CutText is a ClientCutText message the server received, decoded from
// ISO 8859-1 and cut to Options.MaxCutText bytes.
type CutText struct {
	Conn uint64
	Text string
}

// Server is a VNC server that draws a changing test pattern. Its methods are
// safe for concurrent use.
type Server struct {
	opts    Options
	pattern pattern
	start   time.Time
	log     *slog.Logger

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	accepted  uint64
	keys      []KeyEvent
	pointers  []PointerEvent
	cutTexts  []CutText
	changed   chan struct{} // closed and replaced when an event is recorded
	wg        sync.WaitGroup
}

// NewServer returns a server; call Serve to accept connections.
func NewServer(o Options) *Server {
	if o.Width <= 0 {
		o.Width = 640
	}
	if o.Height <= 0 {
		o.Height = 480
	}
	o.Width, o.Height = min(o.Width, 65535), min(o.Height, 65535)
	if o.Name == "" {
		o.Name = "vncgate demo"
	}
	if o.FrameInterval <= 0 {
		o.FrameInterval = 100 * time.Millisecond
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 4096
	}
	if o.MaxCutText <= 0 {
		o.MaxCutText = 64 << 10
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		opts:      o,
		pattern:   newPattern(o.Width, o.Height),
		start:     time.Now(),
		log:       log,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[*session]struct{}{},
		changed:   make(chan struct{}),
	}
}

// Serve accepts connections on l, each served by its own goroutine, until l
// fails or Close is called; it then returns ErrServerClosed (after Close) or
// the accept error. l is closed when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("rfb accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		ss, ok := s.track(c)
		if !ok {
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			s.serveConn(ss)
		}()
	}
}

// Close stops every Serve, closes every connection and waits for their
// goroutines to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.close()
	}
	s.wg.Wait()
	return nil
}

// ActiveConns is the number of connections being served.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Accepted is the number of connections accepted so far.
func (s *Server) Accepted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Keys returns the key events received, oldest first.
func (s *Server) Keys() []KeyEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]KeyEvent(nil), s.keys...)
}

// Pointers returns the pointer events received, oldest first.
func (s *Server) Pointers() []PointerEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]PointerEvent(nil), s.pointers...)
}

// CutTexts returns the cut texts received, oldest first.
func (s *Server) CutTexts() []CutText {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]CutText(nil), s.cutTexts...)
}

// WaitKey returns the first recorded key event (press or release) for
// keysym, waiting for one until ctx ends.
func (s *Server) WaitKey(ctx context.Context, keysym uint32) (KeyEvent, error) {
	return waitFor(ctx, s, func() (KeyEvent, bool) {
		for _, k := range s.keys {
			if k.Keysym == keysym {
				return k, true
			}
		}
		return KeyEvent{}, false
	})
}

// WaitPointer returns the first recorded pointer event that match accepts,
// waiting for one until ctx ends.
func (s *Server) WaitPointer(ctx context.Context, match func(PointerEvent) bool) (PointerEvent, error) {
	return waitFor(ctx, s, func() (PointerEvent, bool) {
		for _, p := range s.pointers {
			if match(p) {
				return p, true
			}
		}
		return PointerEvent{}, false
	})
}

// WaitCutText waits until a cut text equal to text has been received.
func (s *Server) WaitCutText(ctx context.Context, text string) (CutText, error) {
	return waitFor(ctx, s, func() (CutText, bool) {
		for _, c := range s.cutTexts {
			if c.Text == text {
				return c, true
			}
		}
		return CutText{}, false
	})
}

// waitFor calls find under s.mu until it succeeds or ctx ends.
func waitFor[T any](ctx context.Context, s *Server, find func() (T, bool)) (T, error) {
	for {
		s.mu.Lock()
		v, ok := find()
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return v, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		}
	}
}

// record appends an event under s.mu, keeping the latest MaxEvents.
func record[T any](s *Server, list *[]T, v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(*list) >= s.opts.MaxEvents {
		*list = (*list)[1:]
	}
	*list = append(*list, v)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(c net.Conn) (*session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	s.accepted++
	ss := &session{srv: s, id: s.accepted, raw: c, conn: c, pf: PixelFormat32, lastFrame: -1}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	return ss, true
}

func (s *Server) untrack(ss *session) {
	ss.close()
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// frame is the number of the picture shown at t.
func (s *Server) frame(t time.Time) int64 {
	return int64(t.Sub(s.start) / s.opts.FrameInterval)
}

// untilNextFrame is how long after t the picture next changes.
func (s *Server) untilNextFrame(t time.Time) time.Duration {
	next := s.start.Add(time.Duration(s.frame(t)+1) * s.opts.FrameInterval)
	return next.Sub(t)
}

func (s *Server) serveConn(ss *session) {
	defer s.untrack(ss)
	log := s.log.With("conn", ss.id, "remote", ss.raw.RemoteAddr().String())
	_ = ss.raw.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	conn, version, err := s.handshake(ss.raw)
	if err != nil {
		log.Info("rfb handshake failed", "err", err)
		return
	}
	_ = ss.raw.SetDeadline(time.Time{})
	ss.mu.Lock()
	ss.conn = conn
	ss.mu.Unlock()
	log.Debug("rfb session started", "version", version)
	err = ss.readLoop(bufio.NewReaderSize(conn, 256))
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		log.Debug("rfb session ended")
	default:
		log.Info("rfb session ended", "err", err)
	}
}

// handshake runs the version, security and init phases on c and returns
// the conn the session goes on with (TLS after VeNCrypt) and the version
// agreed ("3.8", "3.7" or "3.3"). It reads c unbuffered: after VeNCrypt,
// TLS must read what follows from c itself.
func (s *Server) handshake(c net.Conn) (net.Conn, string, error) {
	conn, version, err := AcceptSecurity(c, s.opts.VeNCrypt)
	if err != nil {
		return nil, "", err
	}
	var b [24]byte
	if _, err := io.ReadFull(conn, b[:1]); err != nil { // ClientInit: shared flag, always shared
		return nil, "", fmt.Errorf("read client init: %w", err)
	}
	binary.BigEndian.PutUint16(b[0:], uint16(s.opts.Width))
	binary.BigEndian.PutUint16(b[2:], uint16(s.opts.Height))
	PixelFormat32.marshal(b[4:20])
	binary.BigEndian.PutUint32(b[20:], uint32(len(s.opts.Name)))
	if _, err := conn.Write(append(b[:], s.opts.Name...)); err != nil {
		return nil, "", err
	}
	return conn, version, nil
}

// session is one client connection.
type session struct {
	srv *Server
	id  uint64
	raw net.Conn // as accepted; closing it ends the session

	// conn is what the session speaks on: raw, or TLS over it after
	// VeNCrypt. Set before the read loop starts, under mu.
	conn net.Conn

	mu        sync.Mutex // serialises writes to conn and guards the fields below
	closed    bool
	pf        PixelFormat
	lastFrame int64 // the frame last sent, -1 before the first
	pending   bool  // an incremental request waits for the next frame
	want      rect
	timer     *time.Timer
}

// close ends the session; closing the conn first unblocks a write in
// progress, which holds ss.mu.
func (ss *session) close() {
	ss.raw.Close()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closed = true
	if ss.timer != nil {
		ss.timer.Stop()
		ss.timer = nil
	}
}

// readLoop reads and answers the client's messages until one fails, and
// returns that error (never nil).
func (ss *session) readLoop(br *bufio.Reader) error {
	s := ss.srv
	var b [19]byte
	for {
		t, err := br.ReadByte()
		if err != nil {
			return err
		}
		switch t {
		case msgSetPixelFormat:
			if _, err := io.ReadFull(br, b[:19]); err != nil {
				return err
			}
			pf := unmarshalPixelFormat(b[3:19])
			if err := pf.Validate(); err != nil {
				return fmt.Errorf("set pixel format: %w", err)
			}
			ss.mu.Lock()
			ss.pf = pf
			ss.mu.Unlock()
		case msgSetEncodings:
			if _, err := io.ReadFull(br, b[:3]); err != nil {
				return err
			}
			n := int(binary.BigEndian.Uint16(b[1:3]))
			if _, err := br.Discard(4 * n); err != nil { // Raw is always sent
				return err
			}
		case msgFramebufferUpdateRequest:
			if _, err := io.ReadFull(br, b[:9]); err != nil {
				return err
			}
			r := rect{
				x: int(binary.BigEndian.Uint16(b[1:])), y: int(binary.BigEndian.Uint16(b[3:])),
				w: int(binary.BigEndian.Uint16(b[5:])), h: int(binary.BigEndian.Uint16(b[7:])),
			}
			if err := ss.request(b[0] != 0, r.clip(s.opts.Width, s.opts.Height)); err != nil {
				return err
			}
		case msgKeyEvent:
			if _, err := io.ReadFull(br, b[:7]); err != nil {
				return err
			}
			record(s, &s.keys, KeyEvent{Conn: ss.id, Down: b[0] != 0, Keysym: binary.BigEndian.Uint32(b[3:])})
		case msgPointerEvent:
			if _, err := io.ReadFull(br, b[:5]); err != nil {
				return err
			}
			record(s, &s.pointers, PointerEvent{
				Conn: ss.id, Buttons: b[0],
				X: binary.BigEndian.Uint16(b[1:]), Y: binary.BigEndian.Uint16(b[3:]),
			})
		case msgClientCutText:
			if _, err := io.ReadFull(br, b[:7]); err != nil {
				return err
			}
			n := binary.BigEndian.Uint32(b[3:])
			if n&(1<<31) != 0 {
				return errors.New("extended clipboard message, not offered")
			}
			keep := min(int(n), s.opts.MaxCutText)
			text := make([]byte, keep)
			if _, err := io.ReadFull(br, text); err != nil {
				return err
			}
			if _, err := br.Discard(int(n) - keep); err != nil {
				return err
			}
			record(s, &s.cutTexts, CutText{Conn: ss.id, Text: latin1(text)})
		default:
			return fmt.Errorf("unknown client message type %d", t)
		}
	}
}

// request answers a FramebufferUpdateRequest: at once when it is a full one
// or the picture changed since the last update, else at the next frame.
func (ss *session) request(incremental bool, r rect) error {
	s := ss.srv
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := time.Now()
	f := s.frame(now)
	if !incremental || f != ss.lastFrame {
		return ss.sendLocked(r, f)
	}
	if ss.pending {
		ss.want = ss.want.union(r)
	} else {
		ss.pending, ss.want = true, r
	}
	if ss.timer == nil && !ss.closed {
		ss.timer = time.AfterFunc(s.untilNextFrame(now), ss.flush)
	}
	return nil
}

// flush sends the pending incremental update once the frame has changed.
func (ss *session) flush() {
	s := ss.srv
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.timer = nil
	if ss.closed || !ss.pending {
		return
	}
	now := time.Now()
	f := s.frame(now)
	if f == ss.lastFrame { // an update went out meanwhile: wait again
		ss.timer = time.AfterFunc(s.untilNextFrame(now), ss.flush)
		return
	}
	ss.pending = false
	if err := ss.sendLocked(ss.want, f); err != nil {
		s.log.Info("rfb update failed", "conn", ss.id, "err", err)
		ss.raw.Close() // the reader sees the error and ends the session
	}
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// sendLocked writes one FramebufferUpdate of r in frame f, streaming the
// pixels through a pooled buffer. ss.mu must be held.
func (ss *session) sendLocked(r rect, f int64) error {
	s := ss.srv
	if ss.closed {
		return net.ErrClosed
	}
	pf := ss.pf
	bpp := pf.BytesPerPixel()
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	buf := (*bufp)[:0]

	buf = append(buf, msgFramebufferUpdate, 0)
	if r.empty() {
		buf = binary.BigEndian.AppendUint16(buf, 0)
	} else {
		buf = binary.BigEndian.AppendUint16(buf, 1)
		for _, v := range []int{r.x, r.y, r.w, r.h} {
			buf = binary.BigEndian.AppendUint16(buf, uint16(v))
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(EncodingRaw))
	}
	_ = ss.conn.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
	defer ss.conn.SetWriteDeadline(time.Time{})

	digits := counter(f)
	var last rgb
	lastPixel := pf.pixel(last)
	for y := r.y; y < r.y+r.h; y++ {
		for x := r.x; x < r.x+r.w; x++ {
			if len(buf)+bpp > cap(buf) {
				if _, err := ss.conn.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
			c := s.pattern.at(f, &digits, x, y)
			if c != last {
				last, lastPixel = c, pf.pixel(c)
			}
			n := len(buf)
			buf = buf[:n+bpp]
			pf.put(buf[n:], lastPixel)
		}
	}
	if _, err := ss.conn.Write(buf); err != nil {
		return err
	}
	ss.lastFrame = f
	return nil
}

// rect is a framebuffer rectangle.
type rect struct{ x, y, w, h int }

func (r rect) empty() bool { return r.w <= 0 || r.h <= 0 }

func (r rect) clip(width, height int) rect {
	x0, y0 := min(r.x, width), min(r.y, height)
	x1, y1 := min(r.x+r.w, width), min(r.y+r.h, height)
	return rect{x0, y0, x1 - x0, y1 - y0}
}

func (r rect) union(o rect) rect {
	if r.empty() {
		return o
	}
	if o.empty() {
		return r
	}
	x0, y0 := min(r.x, o.x), min(r.y, o.y)
	x1, y1 := max(r.x+r.w, o.x+o.w), max(r.y+r.h, o.y+o.h)
	return rect{x0, y0, x1 - x0, y1 - y0}
}
