// Package relay copies bytes both ways between a client and a server
// connection, the one relay both proxies use.
//
// A relay never decides how a session ends: the caller ends it early by
// closing either connection (after sending whatever goodbye its protocol
// has), and reads the Result to learn which side finished first.
// While it runs, Bytes and a Counter tell the bytes moved so far (live
// records and metrics).
package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Side names one end of a relay.
type Side int

const (
	// Client is the user's end (browser WebSocket, Java viewer).
	Client Side = iota + 1
	// Server is the VNC server's end.
	Server
)

func (s Side) String() string {
	switch s {
	case Client:
		return "client"
	case Server:
		return "server"
	}
	return "none"
}

// Result says how a relay went.
type Result struct {
	ClientToServer int64 // bytes read from the client and written to the server
	ServerToClient int64 // bytes read from the server and written to the client
	// FirstDone is the side whose read ended first: that side closed or failed.
	FirstDone Side
	// ClientErr ended the client-to-server direction (reading the client or
	// writing the server), ServerErr the server-to-client one. Each is nil
	// after a clean EOF or when the connection was closed by the other
	// direction or the caller. They are the errors as read or written, not
	// wrapped: the field an error is in tells its direction.
	ClientErr, ServerErr error
}

// Relay copies between client and server until both directions are done.
// When one side's read ends, the relay half-closes the other side's write if
// it can (TCP), so a peer that closes its write half still gets the answer;
// otherwise it closes both connections. Once half-closed, the session ends
// (both connections closed) as soon as no byte has moved for Linger: the
// direction still open may finish what it sends, but RFB has no use for a
// half-open connection, and a client that never closes its side (or a VNC
// server that ignores the client's EOF) must not hold both sockets for
// ever. Both connections are closed when Run returns. Back-pressure is TCP's: each
// direction has one buffer and blocks on write.
//
// Memory is what lets one proxy hold 10,000 consoles, most of them idle: a
// TCP source is read only once it has bytes waiting, with a buffer borrowed
// from a pool for as long as bytes flow, so an idle session holds no buffer.
// It is also why the relay does not splice: Go's splice keeps two pipes (four
// file descriptors) per session for the session's whole life.
type Relay struct {
	// Linger is how long a half-closed session may go without a byte
	// moved before it is closed; New sets DefaultLinger. Set it before Run.
	Linger time.Duration

	// Counter, if not nil, is told of every write as it happens (live
	// metrics). Set it before Run.
	Counter Counter

	client, server net.Conn
	trackIdle      bool         // IdleFor reports lastActive
	toServer       atomic.Int64 // bytes written to the server so far
	toClient       atomic.Int64 // bytes written to the client so far
	lastActive     atomic.Int64 // unix nanoseconds of the last byte moved
	writing        atomic.Int32 // writes in progress: a slow peer is not idle
	closeOnce      sync.Once

	lingerMu    sync.Mutex
	lingerTimer *time.Timer // started by the first half-close, stopped by Close
}

// DefaultLinger is Relay.Linger's default: time enough for the peer's own
// close, and for a loaded machine's pauses, short enough that a session
// whose one side is gone ends promptly.
const DefaultLinger = 10 * time.Second

// New returns a relay between client and server; call Run to start it.
// With trackIdle, IdleFor reports how long no byte has moved.
func New(client, server net.Conn, trackIdle bool) *Relay {
	r := &Relay{Linger: DefaultLinger, client: client, server: server, trackIdle: trackIdle}
	r.lastActive.Store(time.Now().UnixNano())
	return r
}

// IdleFor is how long no byte has moved in either direction; zero when the
// relay does not track idleness.
func (r *Relay) IdleFor() time.Duration {
	if !r.trackIdle {
		return 0
	}
	return r.idleFor()
}

// idleFor is how long no byte has moved; 0 while a write is in progress
// (a peer slow to take a large chunk is busy, not idle).
func (r *Relay) idleFor() time.Duration {
	if r.writing.Load() > 0 {
		return 0
	}
	return time.Since(time.Unix(0, r.lastActive.Load()))
}

// Counter counts bytes while a relay runs. from is the side the bytes were
// read from (Client: client to server). Count must be fast and safe for
// concurrent use: it runs on the relay's copy goroutines.
type Counter interface {
	Count(from Side, n int)
}

// Bytes returns the bytes relayed so far each way, while Run runs and
// after: a live reading for a session's record and metrics. Safe for
// concurrent use.
func (r *Relay) Bytes() (clientToServer, serverToClient int64) {
	return r.toServer.Load(), r.toClient.Load()
}

// Run relays until both directions end, then closes both connections.
func (r *Relay) Run() Result {
	var res Result
	var first atomic.Int32
	var wg sync.WaitGroup
	// The first side is recorded before the half-close, which lets the
	// other direction end too.
	wg.Go(func() {
		res.ClientToServer, res.ClientErr = r.copy(r.server, r.client, Client, func() { first.CompareAndSwap(0, int32(Client)) })
	})
	// The other direction runs on the caller's goroutine, which would
	// only wait otherwise: an idle session keeps one goroutine stack less.
	res.ServerToClient, res.ServerErr = r.copy(r.client, r.server, Server, func() { first.CompareAndSwap(0, int32(Server)) })
	wg.Wait()
	r.Close()
	res.FirstDone = Side(first.Load())
	return res
}

// Close ends the relay at once by closing both connections.
func (r *Relay) Close() {
	r.closeOnce.Do(func() {
		r.lingerMu.Lock()
		if r.lingerTimer != nil {
			r.lingerTimer.Stop()
		}
		r.lingerMu.Unlock()
		r.client.Close()
		r.server.Close()
	})
}

// linger closes both connections once no byte has moved for Linger after
// the first half-close, checking with one timer re-armed for the time left.
func (r *Relay) linger() {
	r.lingerMu.Lock()
	defer r.lingerMu.Unlock()
	if r.lingerTimer != nil {
		return
	}
	d := max(r.Linger, 0)
	r.lingerTimer = time.AfterFunc(d, func() {
		idle := r.idleFor()
		if idle >= d {
			r.Close()
			return
		}
		r.lingerMu.Lock()
		defer r.lingerMu.Unlock()
		r.lingerTimer.Reset(d - idle)
	})
}

type closeWriter interface{ CloseWrite() error }
type closeReader interface{ CloseRead() error }

// copy moves src to dst, calls done, then half-closes: dst gets no more
// writes and src no more reads. Without half-close support both connections
// are closed, which ends the other direction too.
func (r *Relay) copy(dst, src net.Conn, from Side, done func()) (int64, error) {
	// Activity is tracked always: a half-closed session lingers while
	// bytes move.
	total := &r.toServer
	if from == Server {
		total = &r.toClient
	}
	var w io.Writer = &activityWriter{w: dst, r: r, from: from, total: total}
	var n int64
	var err error
	if wt, ok := lazy(src).(io.WriterTo); ok {
		n, err = wt.WriteTo(w) // lazy TCP, or a WebSocket's message reader
	} else {
		n, err = CopyPooled(w, src)
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed by the other direction or by the caller
	}
	done()
	cw, okW := dst.(closeWriter)
	cr, okR := src.(closeReader)
	if err != nil || !okW || !okR || cw.CloseWrite() != nil || cr.CloseRead() != nil {
		r.Close()
	} else {
		r.linger()
	}
	return n, err
}

// activityWriter records when bytes last moved, and how many so far.
type activityWriter struct {
	w     io.Writer
	r     *Relay
	from  Side
	total *atomic.Int64
}

func (a *activityWriter) Write(p []byte) (int, error) {
	a.r.writing.Add(1)
	defer a.r.writing.Add(-1)
	a.r.lastActive.Store(time.Now().UnixNano())
	n, err := a.w.Write(p)
	a.r.lastActive.Store(time.Now().UnixNano())
	if n > 0 {
		a.total.Add(int64(n))
		if a.r.Counter != nil {
			a.r.Counter.Count(a.from, n)
		}
	}
	return n, err
}

// TransparentTCP is implemented by connection wrappers whose reads are their
// TCP connection's reads, untouched and unbuffered (a listener's accounting
// wrapper, say), so the relay may wait on the TCP connection itself and an
// idle session still holds no buffer. TransparentTCP returns nil when there
// is no such connection.
type TransparentTCP interface {
	TransparentTCP() *net.TCPConn
}
