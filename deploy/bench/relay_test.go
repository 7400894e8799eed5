package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
)

// streamUUID is the inventory instance whose "VNC server" is the stream
// server: it gets real console tokens like any instance.
const streamUUID = "5e7a0c1d-3b2f-4a6e-9d8c-7f1e2d3c4b5a"

const (
	relayRounds   = 7                      // measurements per path and direction; the median is reported
	probeBytes    = 16 << 20               // the first, unreported measurement, which sizes the rounds
	roundTarget   = 500 * time.Millisecond // a round moves about this long...
	minRoundBytes = 64 << 20               // ...but at least this much
	maxRoundBytes = 256 << 20              // and at most this much
	roundTimeout  = 30 * time.Second       // a round that takes longer fails the run
	chunkBytes    = 64 << 10               // client writes (and WebSocket messages) of this size
)

// direction of a throughput measurement.
type direction int

const (
	down direction = iota // server to client: the screen
	up                    // client to server: keys, pointer, clipboard
)

func (d direction) String() string {
	if d == down {
		return "server->client"
	}
	return "client->server"
}

// streamServer is the VNC stand-in of the throughput runs. A client sends a
// 9-byte command, a letter and a big-endian length n: for 'D' the server
// sends n bytes; for 'U' it reads n bytes and answers one byte, so the
// client's clock stops when the last byte arrived. Then it waits for the
// client to hang up.
func streamServer(b *testing.B) net.Listener {
	b.Helper()
	data := streamData()
	l := listen(b)
	serve(b, l, func(c net.Conn) { streamConn(c, data) })
	return l
}

// streamData is what the stream server sends: 1 MiB, never compressible.
func streamData() []byte {
	data := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	return data
}

// streamConn serves one stream server connection, sending from data.
func streamConn(c net.Conn, data []byte) {
	c.SetDeadline(time.Now().Add(2 * roundTimeout))
	var cmd [9]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(cmd[1:]))
	switch cmd[0] {
	case 'D':
		for n > 0 {
			k := min(n, int64(len(data)))
			if _, err := c.Write(data[:k]); err != nil {
				return
			}
			n -= k
		}
	case 'U':
		buf := make([]byte, 256<<10)
		for n > 0 {
			k, err := c.Read(buf[:min(n, int64(len(buf)))])
			n -= int64(k)
			if err != nil {
				return
			}
		}
		if _, err := c.Write([]byte{'K'}); err != nil {
			return
		}
	default:
		return
	}
	var one [1]byte
	c.Read(one[:])
}

// relayPath is one way to reach the stream server.
type relayPath struct {
	name string
	// dial returns a stream to the stream server, relay established.
	dial func(ctx context.Context) (net.Conn, error)
	// cpu is the relay's CPU time so far; nil when the relay runs in this
	// process (the baseline).
	cpu func() time.Duration
}

func tcpPath(name, addr string) relayPath {
	return relayPath{name: name, dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
}

func xvpPath(name, addr, token string) relayPath {
	return relayPath{name: name, dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := xvpConnect(c, token); err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}}
}

// wsPath reaches the stream server through a WebSocket proxy with
// coder/websocket; every Write is one binary message.
func wsPath(name, wsURL string, opts *websocket.DialOptions) relayPath {
	return relayPath{name: name, dial: func(ctx context.Context) (net.Conn, error) {
		ws, _, err := websocket.Dial(ctx, wsURL, opts)
		if err != nil {
			return nil, err
		}
		return wsStream{websocket.NetConn(context.Background(), ws, websocket.MessageBinary), ws}, nil
	}}
}

// wsStream closes without waiting for the close handshake.
type wsStream struct {
	net.Conn
	ws *websocket.Conn
}

func (s wsStream) Close() error { return s.ws.CloseNow() }

// novncTarget is the WebSocket URL and Origin a console URL leads to, as
// the console page computes them.
func novncTarget(consoleURL string) (wsURL, origin string, err error) {
	token, err := devstack.TokenOf(consoleURL)
	if err != nil {
		return "", "", err
	}
	u, err := url.Parse(consoleURL)
	if err != nil {
		return "", "", err
	}
	return "ws://" + u.Host + "/websockify?token=" + url.QueryEscape(token), u.Scheme + "://" + u.Host, nil
}

// consoleURL asks consoleauth's REST API for a console URL of uuid.
func consoleURL(b *testing.B, w *devstack.World, uuid, consoleType string) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := w.ConsoleURL(ctx, uuid, consoleType)
	if err != nil {
		b.Fatalf("console URL of %s (%s): %v", uuid, consoleType, err)
	}
	return u
}

// sample is one measurement.
type sample struct {
	mbps               float64       // 10^6 bytes per second
	relayCPU, benchCPU time.Duration // CPU time of the relay's process and of this one
}

// measure moves n bytes one way over a fresh session. The clock runs from
// the command to the last byte (down) or to the server's receipt of it (up);
// session setup is excluded. CPU times cover the whole session.
func measure(p relayPath, dir direction, n int64, buf []byte) (sample, error) {
	relayBefore, benchBefore := time.Duration(0), selfCPU()
	if p.cpu != nil {
		relayBefore = p.cpu()
	}
	elapsed, err := transfer(p, dir, n, buf)
	if err != nil {
		return sample{}, err
	}
	s := sample{mbps: float64(n) / elapsed.Seconds() / 1e6, benchCPU: selfCPU() - benchBefore}
	if p.cpu != nil {
		s.relayCPU = p.cpu() - relayBefore
	}
	return s, nil
}

func transfer(p relayPath, dir direction, n int64, buf []byte) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), roundTimeout)
	defer cancel()
	c, err := p.dial(ctx)
	if err != nil {
		return 0, fmt.Errorf("%s: connect: %w", p.name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(roundTimeout))
	var cmd [9]byte
	cmd[0] = 'D'
	if dir == up {
		cmd[0] = 'U'
	}
	binary.BigEndian.PutUint64(cmd[1:], uint64(n))

	start := time.Now()
	if _, err := c.Write(cmd[:]); err != nil {
		return 0, fmt.Errorf("%s %s: command: %w", p.name, dir, err)
	}
	switch dir {
	case down:
		var got int64
		for got < n {
			k, err := c.Read(buf)
			got += int64(k)
			if err != nil && got < n {
				return 0, fmt.Errorf("%s %s: read after %d of %d bytes: %w", p.name, dir, got, n, err)
			}
		}
	case up:
		for sent := int64(0); sent < n; {
			k := min(int64(len(buf)), n-sent)
			if _, err := c.Write(buf[:k]); err != nil {
				return 0, fmt.Errorf("%s %s: write after %d of %d bytes: %w", p.name, dir, sent, n, err)
			}
			sent += k
		}
		var ack [1]byte
		if _, err := io.ReadFull(c, ack[:]); err != nil {
			return 0, fmt.Errorf("%s %s: server's receipt: %w", p.name, dir, err)
		}
	}
	return time.Since(start), nil
}

// relayFigures are one path's throughput figures, per direction.
type relayFigures struct {
	name       string
	note       string // why the path was not measured, if it was not
	inProcess  bool   // the relay runs in this process: no separate CPU figure
	roundBytes [2]int64
	rounds     [2][]float64 // MB/s per round
	medianMBps [2]float64
	// vsBase is the median over rounds of the ratio to the baseline's
	// throughput in the same round: the two ran seconds apart, so a slow
	// spell on a shared machine cancels out of it.
	vsBase   [2]float64
	moved    [2]int64         // bytes over all rounds
	relayCPU [2]time.Duration // over all rounds
	benchCPU [2]time.Duration
}

// cpuPerGB is CPU milliseconds per 10^9 bytes moved.
func (f *relayFigures) cpuPerGB(cpu time.Duration, dir direction) float64 {
	return float64(cpu) / 1e6 / (float64(f.moved[dir]) / 1e9)
}

// relayResult is the relay section of the report; paths[0] is the baseline.
type relayResult struct {
	paths      []*relayFigures
	websockify string // its version
}

func (r *relayResult) find(name string) *relayFigures {
	for _, p := range r.paths {
		if p.name == name && p.note == "" {
			return p
		}
	}
	return nil
}

// Path names, as printed.
const (
	pathBaseline   = "plain Go TCP relay (baseline)"
	pathNoVNC      = "novnc-proxy (WebSocket)"
	pathWebsockify = "websockify (WebSocket)"
	// The same with the lean client (leanws_test.go), to tell the proxy's
	// cost from the client's.
	pathNoVNCLean      = "novnc-proxy, lean client"
	pathWebsockifyLean = "websockify, lean client"
	pathXVP            = "xvp-proxy (CONNECT, raw TCP)"
)

// benchRelay measures relay throughput both ways through the plain Go
// relay, novnc-proxy, websockify and xvp-proxy, to the same stream server,
// in interleaved rounds.
func benchRelay(b *testing.B) *relayResult {
	sink := streamServer(b)
	// The stream server waits for the client's command: the proxies must
	// not wait for it to speak first.
	w := startStackArgs(b, []string{"--server_greeting_timeout=0"}, instance(streamUUID, sink))
	wsURL, origin, err := novncTarget(consoleURL(b, w, streamUUID, "novnc"))
	if err != nil {
		b.Fatal(err)
	}
	xvpToken, err := devstack.TokenOf(consoleURL(b, w, streamUUID, "xvpvnc"))
	if err != nil {
		b.Fatal(err)
	}
	cpuOf := func(pid int, tree bool) func() time.Duration {
		return func() time.Duration { return procCPU(pid, tree) }
	}

	res := &relayResult{}
	var paths []relayPath
	add := func(p relayPath, note string) {
		res.paths = append(res.paths, &relayFigures{name: p.name, note: note, inProcess: p.cpu == nil})
		if note == "" {
			paths = append(paths, p)
		}
	}
	add(tcpPath(pathBaseline, startPlainRelay(b, sink.Addr().String())), "")
	novnc := wsPath(pathNoVNC, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
	novnc.cpu = cpuOf(w.Proc(devstack.NoVNCProxy).Pid, false)
	add(novnc, "")
	novncLean := leanPath(pathNoVNCLean, wsURL, origin, "")
	novncLean.cpu = novnc.cpu
	add(novncLean, "")
	if wf, err := startWebsockify(b, sink.Addr().String()); err != nil {
		add(relayPath{name: pathWebsockify}, err.Error())
	} else {
		// websockify forks a process per connection: count them all.
		p := wsPath(pathWebsockify, "ws://"+wf.addr+"/", &websocket.DialOptions{Subprotocols: []string{"binary"}})
		p.cpu = cpuOf(wf.pid, true)
		add(p, "")
		lean := leanPath(pathWebsockifyLean, "ws://"+wf.addr+"/", "", "binary")
		lean.cpu = p.cpu
		add(lean, "")
		res.websockify = wf.version
	}
	xvp := xvpPath(pathXVP, w.Addr(w.Ports.XVP), xvpToken)
	xvp.cpu = cpuOf(w.Proc(devstack.XVPProxy).Pid, false)
	add(xvp, "")
	addVeNCryptRelayPaths(b, add) // vencrypt_test.go

	buf := make([]byte, chunkBytes)
	rand.NewChaCha8([32]byte{2}).Read(buf)
	figures := func(name string) *relayFigures {
		for _, f := range res.paths {
			if f.name == name {
				return f
			}
		}
		panic("no path " + name)
	}

	// Size each path's rounds from a probe, so a slow path is not given
	// minutes and a fast one is not timed over a few milliseconds.
	for _, p := range paths {
		f := figures(p.name)
		for _, dir := range []direction{down, up} {
			s, err := measure(p, dir, probeBytes, buf)
			if err != nil {
				b.Fatal(err)
			}
			n := int64(s.mbps * 1e6 * roundTarget.Seconds())
			f.roundBytes[dir] = min(max(n, minRoundBytes), maxRoundBytes) &^ (1<<20 - 1)
		}
	}
	// Interleave paths within each round: noise from other work on the
	// machine then falls on every path alike.
	for range relayRounds {
		for _, p := range paths {
			f := figures(p.name)
			for _, dir := range []direction{down, up} {
				s, err := measure(p, dir, f.roundBytes[dir], buf)
				if err != nil {
					b.Fatal(err)
				}
				f.rounds[dir] = append(f.rounds[dir], s.mbps)
				f.moved[dir] += f.roundBytes[dir]
				f.relayCPU[dir] += s.relayCPU
				f.benchCPU[dir] += s.benchCPU
			}
		}
	}
	base := res.find(pathBaseline)
	for _, f := range res.paths {
		for dir := range f.rounds {
			f.medianMBps[dir] = median(append([]float64(nil), f.rounds[dir]...))
			f.vsBase[dir] = pairedRatio(f.rounds[dir], base.rounds[dir])
		}
	}

	for _, m := range []struct{ name, unit string }{
		{pathBaseline, "base"}, {pathNoVNC, "novnc"}, {pathNoVNCLean, "novnc-lean"},
		{pathWebsockify, "websockify"}, {pathWebsockifyLean, "websockify-lean"}, {pathXVP, "xvp"},
		{pathNoVNCVeNCrypt, "novnc-vencrypt"}, {pathXVPVeNCrypt, "xvp-vencrypt"},
	} {
		f := res.find(m.name)
		if f == nil {
			continue
		}
		b.ReportMetric(f.medianMBps[down], m.unit+"-down-MB/s")
		b.ReportMetric(f.medianMBps[up], m.unit+"-up-MB/s")
		if f != base {
			b.ReportMetric(f.vsBase[down], m.unit+"-down/base")
			b.ReportMetric(f.vsBase[up], m.unit+"-up/base")
		}
	}
	return res
}

// pairedRatio is the median over rounds of a[i]/b[i].
func pairedRatio(a, b []float64) float64 {
	var ratios []float64
	for i := range min(len(a), len(b)) {
		ratios = append(ratios, a[i]/b[i])
	}
	return median(ratios)
}
