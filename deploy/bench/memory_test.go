package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
)

// Idle instances: each proxy gets its own VNC stand-in, so the second run
// never meets the first one's TIME_WAIT leftovers.
const (
	idleNoVNCUUID = "2c4e6a8b-1d3f-4b5a-8c7e-9f0a1b2c3d4e"
	idleXVPUUID   = "8d9e0f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a"
)

const (
	idleFew     = 1_000            // concurrent idle sessions measured first...
	idleMany    = 10_000           // ...and then
	idleWorkers = 32               // sessions opened in parallel
	idleWarmup  = 50               // sessions opened and closed before the first reading
	idleSettle  = 2 * time.Second  // wait before reading the proxy's memory
	idleOpenBy  = 3 * time.Minute  // opening all sessions of one proxy takes at most this
	idleDrainBy = 30 * time.Second // closing them takes at most this
)

// holdServer is the VNC stand-in of the idle sessions: it sends the RFB
// version, reads the client's, and then holds the connection, sending
// nothing, until either side closes. It counts the sessions that got that
// far: both relay directions have then carried bytes.
type holdServer struct {
	l     net.Listener
	conns *connSet
	ready atomic.Int64
}

func startHoldServer(b *testing.B) *holdServer {
	b.Helper()
	h := &holdServer{l: listen(b)}
	h.conns = serve(b, h.l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(rfbVersion); err != nil {
			return
		}
		if err := readVersion(c); err != nil {
			return
		}
		c.SetDeadline(time.Time{})
		h.ready.Add(1)
		defer h.ready.Add(-1)
		var one [1]byte
		c.Read(one[:]) // until the proxy closes
	})
	return h
}

// idleProxy is what the memory run needs of one proxy.
type idleProxy struct {
	name string
	pid  int
	hold *holdServer
	// open starts one session through the proxy and returns once the RFB
	// versions crossed; the closer ends it without a goodbye.
	open func(ctx context.Context) (io.Closer, error)
}

// memPoint is the proxy's state at one number of sessions.
type memPoint struct {
	sessions  int
	rssKiB    int64 // VmRSS
	anonKiB   int64 // RssAnon
	fds       int   // the proxy's open files
	threads   int64
	benchFDs  int // this process's open files
	requested int // the count asked for, when the file limit allowed fewer
}

// memFigures are one proxy's memory figures.
type memFigures struct {
	name      string
	fileLimit int // the proxy's open-file limit
	fdsIdle   int // the proxy's open files before the warm-up
	base      memPoint
	points    []memPoint
	notes     []string
	err       error // set when a count could not be reached
	openTime  time.Duration
}

// filesPerSession is the proxy's open files per session at pt.
func (f *memFigures) filesPerSession(pt memPoint) float64 {
	return float64(pt.fds-f.fdsIdle) / float64(pt.sessions)
}

type memoryResult struct {
	proxies   []*memFigures
	fileLimit uint64 // this process's
}

// readPoint reads the proxy's memory and files.
func readPoint(pid, sessions int) (memPoint, error) {
	st, err := procStatus(pid)
	if err != nil {
		return memPoint{}, err
	}
	return memPoint{sessions: sessions, rssKiB: st["VmRSS"], anonKiB: st["RssAnon"], fds: fdCount(pid), threads: st["Threads"],
		benchFDs: fdCount(os.Getpid())}, nil
}

// sessionSet is the client ends of open sessions.
type sessionSet struct {
	mu      sync.Mutex
	closers []io.Closer
}

func (s *sessionSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.closers)
}

// openTo opens sessions until there are n, idleWorkers at a time.
func (s *sessionSet) openTo(ctx context.Context, p *idleProxy, n int) error {
	need := int64(n - s.len())
	var claimed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range idleWorkers {
		wg.Go(func() {
			for claimed.Add(1) <= need && ctx.Err() == nil {
				c, err := p.open(ctx)
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				s.mu.Lock()
				s.closers = append(s.closers, c)
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%d of %d sessions open: %w", s.len(), n, err)
	}
	// The client has sent its version; wait until the VNC side got it.
	for p.hold.ready.Load() < int64(n) {
		if ctx.Err() != nil {
			return fmt.Errorf("%d of %d sessions reached the VNC server: %w", p.hold.ready.Load(), n, ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// closeAll ends every session from both sides and waits until the proxy
// let go of them: its open files stop changing (at most idleDrainBy). They
// need not return to where they were: Go keeps splice pipes pooled until a
// garbage collection, which an idle process does not run.
func (s *sessionSet) closeAll(p *idleProxy) error {
	s.mu.Lock()
	closers := s.closers
	s.closers = nil
	s.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
	p.hold.conns.closeAll(false)
	deadline := time.Now().Add(idleDrainBy)
	last, stableSince := fdCount(p.pid), time.Now()
	for p.hold.ready.Load() > 0 || time.Since(stableSince) < time.Second {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: open files still changing (%d) %v after its sessions closed", p.name, last, idleDrainBy)
		}
		time.Sleep(50 * time.Millisecond)
		if n := fdCount(p.pid); n != last {
			last, stableSince = n, time.Now()
		}
	}
	return nil
}

// fdMargin is the open files kept free for everything but the sessions.
const fdMargin = 200

// reachable is the largest count up to n, in steps of 100, that the
// open-file limits of the proxy and of this process allow, judging by the
// files per session seen at the last reading; and why it is less than n.
func reachable(n int, f *memFigures, benchLimit uint64) (int, string) {
	if len(f.points) == 0 {
		return n, ""
	}
	last := f.points[len(f.points)-1]
	proxyPer := f.filesPerSession(last)
	benchPer := float64(last.benchFDs-f.base.benchFDs) / float64(last.sessions)
	maxProxy := float64(f.fileLimit-f.fdsIdle-fdMargin) / proxyPer
	maxBench := float64(int(benchLimit)-f.base.benchFDs-fdMargin) / benchPer
	m := int(min(maxProxy, maxBench))
	if m >= n {
		return n, ""
	}
	var why []string
	if int(maxProxy) < n {
		why = append(why, fmt.Sprintf("%s, at %.1f open files per session, holds at most %s under its limit of %d",
			f.name, proxyPer, thousands(int(maxProxy)), f.fileLimit))
	}
	if int(maxBench) < n {
		why = append(why, fmt.Sprintf("this process, at %.1f per session, at most %s under its limit of %d",
			benchPer, thousands(int(maxBench)), benchLimit))
	}
	return m / 100 * 100, thousands(n) + " sessions do not fit: " + strings.Join(why, "; ")
}

// measureIdle opens idle sessions on one proxy up to idleFew, then idleMany (or
// as many as the open-file limits allow) and reads the proxy's memory at
// each, against a reading with none.
func measureIdle(b *testing.B, p *idleProxy, benchLimit uint64) *memFigures {
	f := &memFigures{name: p.name}
	f.fileLimit, _ = strconv.Atoi(fileLimitOf(p.pid))
	set := &sessionSet{}
	f.fdsIdle = fdCount(p.pid)

	// Warm up, so the first reading already holds the code and the pools a
	// session touches, then settle.
	ctx, cancel := context.WithTimeout(context.Background(), idleOpenBy)
	defer cancel()
	if err := set.openTo(ctx, p, idleWarmup); err != nil {
		f.err = fmt.Errorf("warm-up: %w", err)
		set.closeAll(p)
		return f
	}
	if err := set.closeAll(p); err != nil {
		b.Fatal(err)
	}
	time.Sleep(idleSettle)
	var err error
	if f.base, err = readPoint(p.pid, 0); err != nil {
		b.Fatal(err)
	}

	start := time.Now()
	for _, want := range []int{idleFew, idleMany} {
		n, why := reachable(want, f, benchLimit)
		if why != "" {
			f.notes = append(f.notes, why)
		}
		if n <= set.len() {
			continue
		}
		if err := set.openTo(ctx, p, n); err != nil {
			f.err = fmt.Errorf("opening %s sessions: %w", thousands(n), err)
			break
		}
		f.openTime = time.Since(start)
		time.Sleep(idleSettle)
		pt, err := readPoint(p.pid, n)
		if err != nil {
			b.Fatal(err)
		}
		if n != want {
			pt.requested = want
		}
		f.points = append(f.points, pt)
	}
	if err := set.closeAll(p); err != nil {
		b.Fatal(err)
	}
	return f
}

// benchIdleMemory measures the memory an idle console costs novnc-proxy and
// xvp-proxy at 1,000 and 10,000 concurrent sessions, on a fresh stack.
func benchIdleMemory(b *testing.B, benchLimit uint64) *memoryResult {
	holdNoVNC, holdXVP := startHoldServer(b), startHoldServer(b)
	w := startStack(b, instance(idleNoVNCUUID, holdNoVNC.l), instance(idleXVPUUID, holdXVP.l))
	wsURL, origin, err := novncTarget(consoleURL(b, w, idleNoVNCUUID, "novnc"))
	if err != nil {
		b.Fatal(err)
	}
	xvpToken, err := devstack.TokenOf(consoleURL(b, w, idleXVPUUID, "xvpvnc"))
	if err != nil {
		b.Fatal(err)
	}
	xvpAddr := w.Addr(w.Ports.XVP)
	dialer := &rotatingDialer{}
	transport := &http.Transport{DialContext: dialer.DialContext}
	wsOpts := &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: transport},
		HTTPHeader: http.Header{"Origin": {origin}},
	}

	proxies := []*idleProxy{
		{name: devstack.NoVNCProxy, pid: w.Proc(devstack.NoVNCProxy).Pid, hold: holdNoVNC,
			open: func(ctx context.Context) (io.Closer, error) {
				ws, _, err := websocket.Dial(ctx, wsURL, wsOpts)
				if err != nil {
					return nil, err
				}
				var got []byte
				for len(got) < len(rfbVersion) {
					_, msg, err := ws.Read(ctx)
					if err != nil {
						ws.CloseNow()
						return nil, fmt.Errorf("first RFB bytes: %w", err)
					}
					got = append(got, msg...)
				}
				if err := ws.Write(ctx, websocket.MessageBinary, rfbVersion); err != nil {
					ws.CloseNow()
					return nil, err
				}
				// Idle from here on, but answering the proxy's pings as a
				// browser does.
				ws.CloseRead(context.Background())
				return closerFunc(ws.CloseNow), nil
			}},
		{name: devstack.XVPProxy, pid: w.Proc(devstack.XVPProxy).Pid, hold: holdXVP,
			open: func(ctx context.Context) (io.Closer, error) {
				c, err := dialer.DialContext(ctx, "tcp", xvpAddr)
				if err != nil {
					return nil, err
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				err = xvpConnect(c, xvpToken)
				if err == nil {
					err = readVersion(c)
				}
				if err == nil {
					_, err = c.Write(rfbVersion)
				}
				if err != nil {
					c.Close()
					return nil, err
				}
				c.SetDeadline(time.Time{})
				return c, nil
			}},
	}
	res := &memoryResult{fileLimit: benchLimit}
	for _, p := range proxies {
		f := measureIdle(b, p, benchLimit)
		res.proxies = append(res.proxies, f)
		for _, pt := range f.points {
			b.ReportMetric(perSessionKiB(f.base, pt), fmt.Sprintf("%s-KiB/session-%d", shortName(p.name), pt.sessions))
		}
	}
	transport.CloseIdleConnections()
	return res
}

// perSessionKiB is the proxy's resident memory growth per session.
func perSessionKiB(base, pt memPoint) float64 {
	if pt.sessions == 0 {
		return 0
	}
	return float64(pt.rssKiB-base.rssKiB) / float64(pt.sessions)
}

func shortName(proxy string) string {
	switch proxy {
	case devstack.NoVNCProxy:
		return "novnc"
	case devstack.XVPProxy:
		return "xvp"
	}
	return proxy
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
