package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/origin"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// pipeListener hands the server the far ends of net.Pipes, each tracked so
// the fuzz test sees when the server has closed it.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return stringAddr("pipe") }

// trackedConn reports its Close.
type trackedConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// fuzzProxy is novnc-proxy's real handler and http.Server, with the
// stand-in consoleauth and the demo VNC server, serving pipes.
type fuzzProxy struct {
	l        *pipeListener
	token    string // a valid token
	panicked atomic.Value
}

const fuzzHandshakeTimeout = 300 * time.Millisecond

func startFuzzProxy(f *testing.F) *fuzzProxy {
	f.Helper()
	auth := fakeconsoleauth.Start(f)
	vl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	vnc := rfb.NewServer(rfb.Options{Width: 16, Height: 16})
	go vnc.Serve(vl)
	f.Cleanup(func() { vnc.Close() })
	port := vl.Addr().(*net.TCPAddr).Port
	conn, err := tokencheck.Dial(auth.Addr, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	policy, err := origin.NewPolicy("http://console.example/vnc_lite.html", nil)
	if err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	core := sessions.New(sessions.Config{
		ConsoleType:      ConsoleType,
		Checker:          tokencheck.New(conn, fuzzHandshakeTimeout),
		Dialer:           backend.Dialer{Timeout: fuzzHandshakeTimeout},
		FailBan:          failban.New(10, time.Minute),
		Log:              log,
		HandshakeTimeout: fuzzHandshakeTimeout,
	})
	px := New(Options{
		Core:             core,
		Origin:           policy,
		Web:              http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "page") }),
		Log:              log,
		HandshakeTimeout: fuzzHandshakeTimeout,
		PingInterval:     time.Second,
	})
	p := &fuzzProxy{l: &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}}
	p.token = auth.Mint("6d5c8a3e-0000-4000-8000-0000000000f0", "novnc", "127.0.0.1", int32(port), time.Hour)
	srv := px.HTTPServer(log)
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				p.panicked.CompareAndSwap(nil, fmt.Sprint(v))
				panic(v)
			}
		}()
		px.ServeHTTP(w, r)
	})
	go srv.Serve(p.l)
	f.Cleanup(func() {
		p.l.Close()
		srv.Close()
		px.EndSessions()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		core.Wait(ctx)
	})
	return p
}

// FuzzWebSocketHandshake feeds request bytes to novnc-proxy's real handler
// over a pipe: whatever they are, the handler must not panic, and once the
// client has gone the server must close the connection (no hang).
//
// Background goroutines (gRPC, timers) make coverage noisy, so keep
// minimization short:
//
//	go test -run '^$' -fuzz FuzzWebSocketHandshake -fuzztime 60s -fuzzminimizetime 10x ./internal/proxy/
func FuzzWebSocketHandshake(f *testing.F) {
	p := startFuzzProxy(f)
	upgrade := func(target, extra string) []byte {
		return []byte("GET " + target + " HTTP/1.1\r\nHost: console.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n")
	}
	for _, seed := range [][]byte{
		upgrade("/?token="+p.token, "Origin: http://console.example\r\nSec-WebSocket-Protocol: binary\r\n"),
		append(upgrade("/websockify?token="+p.token, ""), 0x82, 0x8c, 1, 2, 3, 4, 'R', 'F', 'B', ' ', '0', '0', '3', '.', '0', '0', '8', '\n'),
		upgrade("/?token=nope", "Origin: http://console.example\r\n"),
		upgrade("/", "Cookie: token="+p.token+"\r\nOrigin: http://evil.example\r\n"),
		upgrade("/?token=x", "Sec-WebSocket-Protocol: base64\r\n"),
		upgrade("//evil.example/?token=x", ""),
		[]byte("GET /?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n"),
		[]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"),
		[]byte("GET /vnc_lite.html HTTP/1.0\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05hello"),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		client, server := net.Pipe()
		tracked := &trackedConn{Conn: server, closed: make(chan struct{})}
		select {
		case p.l.conns <- tracked:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not accept a connection within 10s")
		}
		go client.Write(req) // ends when the server reads it all or the pipe closes
		client.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		io.Copy(io.Discard, client) // the answer, or what the session sends
		client.Close()
		select {
		case <-tracked.closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("the server still holds the connection 10s after the client left (request %q)", req)
		}
		if v := p.panicked.Load(); v != nil {
			t.Fatalf("handler panicked: %v (request %q)", v, req)
		}
	})
}
