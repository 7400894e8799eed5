package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/pires/go-proxyproto"

	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/failban"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/scrape"
)

func TestSessionRelaysBothWaysWithHalfClose(t *testing.T) {
	w := newWorld(t)
	w.auth.add("tok", "inst-1", echoServer(t))
	for _, req := range []string{
		"CONNECT /console?token=tok HTTP/1.0\r\n\r\n",
		"CONNECT /console?token=tok HTTP/1.1\r\nHost: proxy:6081\r\nUser-Agent: Java\r\n\r\n",
		"GET /console?token=tok HTTP/1.1\r\n\r\n",
		"CONNECT http://proxy:6081/console?token=tok HTTP/1.1\r\n\r\n",
	} {
		t.Run(strings.Fields(req)[0]+" "+strings.Fields(req)[2], func(t *testing.T) {
			c := w.dial(t)
			io.WriteString(c, req)
			br := bufio.NewReader(c)
			got := make([]byte, len(replyOK))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != golden(t, "ok") {
				t.Fatalf("answer: got %q (%v), want exactly %q", got, err, golden(t, "ok"))
			}
			echo(t, c, br, "RFB 003.008\n")
			// Half-close: the echo of bytes sent before CloseWrite still
			// arrives, then EOF.
			io.WriteString(c, "last words")
			c.CloseWrite()
			if rest := readAnswer(t, br); rest != "last words" {
				t.Fatalf("after half-close: got %q, want %q then EOF", rest, "last words")
			}
		})
	}
	w.waitSessions(t, 0)
}

// After the VNC server closes, the session must not hold both sockets until
// the client closes: a client that never closes its side is cut once the
// half-closed session has been quiet for the linger.
func TestSessionEndsWhenTheVNCServerClosesAndTheClientDoesNot(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.core.HalfCloseLinger = 200 * time.Millisecond })
	vncClosed := make(chan struct{})
	w.auth.add("tok", "inst-1", loopback.Serve(t, func(c net.Conn) {
		io.CopyN(io.Discard, c, 5)
		io.WriteString(c, "bye")
		close(vncClosed) // then the handler returns: the VNC server closes
	}))
	c, br := w.session(t, "tok")
	io.WriteString(c, "hello")
	got := make([]byte, 3)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "bye" {
		t.Fatalf("got %q (%v), want the server's goodbye", got, err)
	}
	<-vncClosed
	// The client keeps its side open and says nothing more.
	w.waitSessions(t, 0)
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_session_ended_total", "reason", "server_closed"); got != 1 {
		t.Errorf("session_ended_total{reason=server_closed}: got %v, want 1", got)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("the client's connection still gives bytes after the session ended")
	}
}

// TestBadInputWhileOthersAreServed sends every kind of bad request at once
// while a live session keeps echoing, and checks each answer byte for byte.
func TestBadInputWhileOthersAreServed(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.proxy.HandshakeTimeout = 2 * time.Second })
	echoAddr := echoServer(t)
	w.auth.add("good", "inst-1", echoAddr)
	w.auth.add("canary", "inst-0", echoAddr)
	w.auth.addType("novnc-token", "inst-1", echoAddr, "novnc")
	w.auth.fail("moved", codes.FailedPrecondition)
	w.auth.fail("down", codes.Unavailable)
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	w.auth.add("dead-vnc", "inst-2", deadAddr)

	// The canary: one session that must keep working throughout.
	canary, canaryR := w.session(t, "canary")
	stopCanary := make(chan struct{})
	canaryErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 5)
		for i := 0; ; i++ {
			select {
			case <-stopCanary:
				canaryErr <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			msg := fmt.Sprintf("%05d", i%100000)
			if _, err := io.WriteString(canary, msg); err != nil {
				canaryErr <- err
				return
			}
			if _, err := io.ReadFull(canaryR, buf); err != nil || string(buf) != msg {
				canaryErr <- fmt.Errorf("canary echo %d: got %q (%v), want %q", i, buf, err, msg)
				return
			}
		}
	}()

	type exchange func(t *testing.T, c *net.TCPConn) // sends the request
	send := func(s string) exchange {
		return func(t *testing.T, c *net.TCPConn) {
			if _, err := io.WriteString(c, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		send   exchange
		want   string // golden reply name; "" means a close with no answer
		then   func(t *testing.T, c *net.TCPConn, r *bufio.Reader)
		result string // of vncgate_proxy_sessions_total when not resultOf[want]
	}{
		{name: "no token", send: send("CONNECT /console HTTP/1.1\r\n\r\n"), want: "no-token"},
		{name: "empty token", send: send("CONNECT /console?token= HTTP/1.1\r\n\r\n"), want: "no-token"},
		{name: "garbage bytes", send: send("\x00\xff\x13\x37 garbage \x01\x02\r\n\r\n"), want: "malformed"},
		{name: "tls client hello on the plain port", send: send("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), want: "malformed"},
		{name: "http/2 preface", send: send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), want: "malformed"},
		{name: "5 KiB head", send: send("CONNECT /console?token=good HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", 5<<10) + "\r\n\r\n"), want: "too-long"},
		{name: "head with no empty line before EOF", send: func(t *testing.T, c *net.TCPConn) {
			io.WriteString(c, "CONNECT /console?token=good HTTP/1.1\r\nHost: proxy\r\n")
			c.CloseWrite()
		}, want: "incomplete"},
		{name: "one byte per second", send: func(t *testing.T, c *net.TCPConn) {
			go func() { // stops when the proxy closes; never fails the test itself
				for _, b := range []byte("CONNECT /console?token=good HTTP/1.1\r\n\r\n") {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(time.Second)
				}
			}()
		}, want: "timeout"},
		{name: "connect and say nothing", send: func(*testing.T, *net.TCPConn) {}, want: "timeout"},
		{name: "connect and close at once", send: func(t *testing.T, c *net.TCPConn) { c.CloseWrite() }, want: ""},
		{name: "unknown token", send: send("CONNECT /console?token=nope HTTP/1.1\r\n\r\n"), want: "invalid-token"},
		{name: "token of another console type", send: send("CONNECT /console?token=novnc-token HTTP/1.1\r\n\r\n"), want: "invalid-token", result: "wrong_type"},
		{name: "console moved", send: send("CONNECT /console?token=moved HTTP/1.1\r\n\r\n"), want: "moved"},
		{name: "consoleauth unavailable", send: send("CONNECT /console?token=down HTTP/1.1\r\n\r\n"), want: "unavailable"},
		{name: "vnc server unreachable", send: send("CONNECT /console?token=dead-vnc HTTP/1.1\r\n\r\n"), want: "bad-gateway"},
		{name: "POST", send: send("POST /console?token=good HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), want: "method"},
		{name: "HEAD", send: send("HEAD /console?token=good HTTP/1.1\r\n\r\n"), want: "method"},
		{name: "PUT", send: send("PUT /console?token=good HTTP/1.0\r\n\r\n"), want: "method"},
		{name: "DELETE", send: send("DELETE /console?token=good HTTP/1.1\r\n\r\n"), want: "method"},
		{name: "OPTIONS", send: send("OPTIONS * HTTP/1.1\r\n\r\n"), want: "method"},
		{name: "lower-case connect", send: send("connect /console?token=good HTTP/1.1\r\n\r\n"), want: "malformed"},
		{name: "head split over many packets", send: func(t *testing.T, c *net.TCPConn) {
			c.SetNoDelay(true)
			for _, b := range []byte("CONNECT /console?token=good HTTP/1.1\r\nHost: proxy\r\n\r\n") {
				if _, err := c.Write([]byte{b}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}, want: "ok", then: func(t *testing.T, c *net.TCPConn, r *bufio.Reader) {
			echo(t, c, r, "split head works")
		}},
		{name: "RFB bytes pipelined after the head", send: send("CONNECT /console?token=good HTTP/1.1\r\n\r\nRFB 003.008\n\x01"), want: "ok",
			then: func(t *testing.T, c *net.TCPConn, r *bufio.Reader) {
				got := make([]byte, 13) // the echo server proves the VNC side got them
				if _, err := io.ReadFull(r, got); err != nil || string(got) != "RFB 003.008\n\x01" {
					t.Fatalf("pipelined bytes: got %q (%v), want them echoed", got, err)
				}
			}},
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				c := w.dial(t)
				start := time.Now()
				tc.send(t, c)
				br := bufio.NewReader(c)
				if tc.want == "ok" {
					got := make([]byte, len(replyOK))
					if _, err := io.ReadFull(br, got); err != nil || string(got) != golden(t, "ok") {
						t.Fatalf("answer: got %q (%v), want %q", got, err, golden(t, "ok"))
					}
					tc.then(t, c, br)
					return
				}
				want := ""
				if tc.want != "" {
					want = golden(t, tc.want)
				}
				if got := readAnswer(t, br); got != want {
					t.Fatalf("answer: got %q, want %q and a close", got, want)
				}
				t.Logf("answered after %v", time.Since(start))
			})
		}
	})

	close(stopCanary)
	if err := <-canaryErr; err != nil {
		t.Fatalf("the live session broke while bad clients were refused: %v", err)
	}
	echo(t, canary, canaryR, "still here")

	// Every connection was counted once, under its result.
	resultOf := map[string]string{
		"ok": "relayed", "": "client_gone", "timeout": "handshake_timeout",
		"no-token": "bad_request", "malformed": "bad_request", "too-long": "bad_request", "incomplete": "bad_request", "method": "bad_request",
		"invalid-token": "token_invalid", "moved": "console_moved", "unavailable": "unavailable", "bad-gateway": "vnc_unreachable",
	}
	want := map[string]float64{"relayed": 1} // the canary
	for _, tc := range tests {
		r := tc.result
		if r == "" {
			r = resultOf[tc.want]
		}
		want[r]++
	}
	for result, n := range want {
		if got := scrape.Value(t, w.metrics, "vncgate_proxy_sessions_total", "result", result); got != n {
			t.Errorf("sessions_total{result=%q}: got %v, want %v", result, got, n)
		}
	}
}

func TestInternalAccessPath(t *testing.T) {
	// backendWith answers the CONNECT from the proxy with reply, then echoes.
	backendWith := func(t *testing.T, reply string, heads chan<- string) string {
		return loopback.Serve(t, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				head.WriteString(line)
				if err != nil || line == "\r\n" {
					break
				}
			}
			heads <- head.String()
			io.WriteString(c, reply)
			io.Copy(c, br)
		})
	}
	tests := []struct {
		name, reply, want string
	}{
		{"back end answers 200", "HTTP/1.1 200 OK\r\nX-Extra: y\r\n\r\nRFB 003.008\n", "ok"},
		{"back end answers 403", "HTTP/1.1 403 Forbidden\r\n\r\n", "bad-gateway"},
		{"back end answers 200 in the wrong place", "HTTP/1.1 403 Forbidden 200\r\n\r\n", "bad-gateway"},
		{"back end speaks RFB instead", "RFB 003.008\n\r\n", "bad-gateway"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			heads := make(chan string, 1)
			w.auth.addPath("tok", "inst-1", backendWith(t, tc.reply, heads), "/vnc?instance=inst-1")
			c := w.dial(t)
			io.WriteString(c, "CONNECT /console?token=tok HTTP/1.1\r\n\r\n")
			br := bufio.NewReader(c)
			if got := <-heads; got != "CONNECT /vnc?instance=inst-1 HTTP/1.1\r\n\r\n" {
				t.Errorf("back end got %q, want the internal CONNECT", got)
			}
			if tc.want != "ok" {
				if got := readAnswer(t, br); got != golden(t, tc.want) {
					t.Fatalf("answer: got %q, want %q", got, golden(t, tc.want))
				}
				return
			}
			got := make([]byte, len(replyOK)+12)
			if _, err := io.ReadFull(br, got); err != nil || string(got) != "HTTP/1.1 200 OK\r\n\r\nRFB 003.008\n" {
				t.Fatalf("got %q (%v), want the 200 then the back end's first bytes", got, err)
			}
			echo(t, c, br, "through the internal path")
		})
	}
}

// An address and token prefix with too many invalid tokens is slowed down,
// never refused: a valid token sharing them still gets its session.
func TestThrottledAddressStillConnectsWithAValidToken(t *testing.T) {
	ban := failban.New(3, time.Minute)
	w := newWorld(t, func(c *worldConfig) { c.core.FailBan = ban })
	request := func(target string) string {
		t.Helper()
		c := w.dial(t)
		io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\n\r\n")
		return readAnswer(t, c)
	}
	for range 5 { // requests without a token guess nothing: not counted
		if got := request("/console"); got != golden(t, "no-token") {
			t.Fatalf("got %q, want no-token", got)
		}
	}
	for i := range 3 {
		if got := request("/console?token=guess"); got != golden(t, "invalid-token") {
			t.Fatalf("guess %d: got %q, want invalid-token", i, got)
		}
	}
	good := "good"
	for i := 0; !ban.Throttled("127.0.0.1", good); i++ {
		good = fmt.Sprintf("good-%d", i)
	}
	w.auth.add(good, "inst-1", echoServer(t))
	c, br := w.session(t, good)
	echo(t, c, br, "a valid token from a throttled address")
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_token_checks_throttled_total"); got != 1 {
		t.Errorf("token_checks_throttled_total: got %v, want 1", got)
	}
	if !strings.Contains(w.logs.String(), "token check throttled") {
		t.Errorf("no log line for the throttled check")
	}
}

func TestMaxSessionsPerInstance(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.core.MaxPerInstance = 1 })
	echoAddr := echoServer(t)
	w.auth.add("a", "inst-1", echoAddr)
	w.auth.add("b", "inst-2", echoAddr)
	first, _ := w.session(t, "a")
	c := w.dial(t)
	io.WriteString(c, "CONNECT /console?token=a HTTP/1.1\r\n\r\n")
	if got := readAnswer(t, c); got != golden(t, "too-many") {
		t.Fatalf("second session: got %q, want too-many", got)
	}
	other, otherR := w.session(t, "b") // another instance has its own cap
	echo(t, other, otherR, "b works")
	first.Close()
	w.waitSessions(t, 1)
	again, againR := w.session(t, "a")
	echo(t, again, againR, "a works again")
}

// expectClosed requires the proxy to close c within d.
func expectClosed(t *testing.T, c net.Conn, r io.Reader, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(d))
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, context.DeadlineExceeded) || (err != nil && strings.Contains(err.Error(), "timeout")) {
		t.Fatalf("still open after %v, want closed by the proxy", d)
	}
	return time.Since(start)
}

func TestRevokeEndsTheInstancesSessions(t *testing.T) {
	w := newWorld(t)
	echoAddr := echoServer(t)
	w.auth.add("a", "inst-a", echoAddr)
	w.auth.add("b", "inst-b", echoAddr)
	a1, a1r := w.session(t, "a")
	a2, a2r := w.session(t, "a")
	b, br := w.session(t, "b")
	w.waitSessions(t, 3)

	revokedAt := time.Now()
	time.Sleep(5 * time.Millisecond)
	later, laterR := w.session(t, "a") // checked after the revocation: holds a newer token
	w.core.Revoke("inst-a", registry.Revocation{Reason: "the instance was deleted", RevokedAt: revokedAt})

	for _, s := range []struct {
		c net.Conn
		r io.Reader
	}{{a1, a1r}, {a2, a2r}} {
		t.Logf("closed after %v", expectClosed(t, s.c, s.r, 30*time.Second))
	}
	echo(t, b, br, "other instance unaffected")
	echo(t, later, laterR, "newer session unaffected")
	w.waitSessions(t, 2)
	if !strings.Contains(w.logs.String(), `message="the instance was deleted" reason=revoked`) {
		t.Errorf("log does not say why the sessions ended:\n%s", w.logs)
	}
}

func TestHandshakeDeadlineIsClearedAfterThe200(t *testing.T) {
	// The whole handshake must fit in the limit: a second leaves room for
	// a loaded machine; then time passes beyond it.
	w := newWorld(t, func(c *worldConfig) { c.proxy.HandshakeTimeout = time.Second })
	w.auth.add("a", "inst-a", echoServer(t))
	c, r := w.session(t, "a")
	time.Sleep(2 * time.Second)
	echo(t, c, r, "still relaying after twice the handshake timeout")
}

func TestShutdown(t *testing.T) {
	t.Run("drains live sessions", func(t *testing.T) {
		w := newWorld(t, func(c *worldConfig) { c.proxy.DrainTimeout = 10 * time.Second })
		w.auth.add("a", "inst-a", echoServer(t))
		c, r := w.session(t, "a")
		stopped := make(chan struct{})
		go func() { w.stop(); close(stopped) }()
		deadline := time.Now().Add(2 * time.Second)
		for { // the listener closes first
			nc, err := net.DialTimeout("tcp", w.addr, time.Second)
			if err != nil {
				break
			}
			nc.Close()
			if time.Now().After(deadline) {
				t.Fatal("proxy still accepts after shutdown began")
			}
			time.Sleep(10 * time.Millisecond)
		}
		echo(t, c, r, "live session still served while draining")
		select {
		case <-stopped:
			t.Fatal("Serve returned with a live session")
		default:
		}
		c.Close()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			t.Fatal("Serve did not return after the last session ended")
		}
	})
	t.Run("closes sessions at the drain deadline", func(t *testing.T) {
		w := newWorld(t, func(c *worldConfig) { c.proxy.DrainTimeout = 300 * time.Millisecond })
		w.auth.add("a", "inst-a", echoServer(t))
		c, r := w.session(t, "a")
		half := w.dial(t) // a handshake in progress is closed too
		io.WriteString(half, "CONNECT /console?tok")
		start := time.Now()
		w.stop()
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("Serve returned after %v, want after the 300ms drain timeout", d)
		}
		expectClosed(t, c, r, 30*time.Second)
		expectClosed(t, half, half, 30*time.Second)
		if !strings.Contains(w.logs.String(), "proxy shutting down") {
			t.Errorf("log does not say why the session ended:\n%s", w.logs)
		}
	})
}

func TestTokenIsNeverLogged(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.core.FailBan = failban.New(1, time.Minute) })
	const good, bad = "GOOD-SECRET-TOKEN-4f1a", "BAD-SECRET-TOKEN-9c2e"
	w.auth.add(good, "inst-a", echoServer(t))
	c, r := w.session(t, good)
	echo(t, c, r, "x")
	c.Close()
	for _, req := range []string{
		"CONNECT /console?token=" + bad + " HTTP/1.1\r\n\r\n", // 401
		"CONNECT /console?token=" + bad + " HTTP/1.1\r\n\r\n", // 401 again, after a wait
		"POST /console?token=" + bad + " HTTP/1.1\r\n\r\n",    // 405
		"CONNECT /console?token=" + bad + "%00 HTTP/1.1\r\n\r\n",
		"CONNECT /console?token=" + bad + " HTTP/1.1\r\nX: " + strings.Repeat("y", 5000),
	} {
		c := w.dial(t)
		io.WriteString(c, req)
		readAnswer(t, c)
	}
	w.waitSessions(t, 0)
	logs := w.logs.String()
	for _, secret := range []string{good, bad, "SECRET"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q:\n%s", secret, logs)
		}
	}
	for _, tok := range []string{good, bad} {
		if h := registry.HashPrefix(registry.TokenHash(tok)); !strings.Contains(logs, "token_hash="+h) {
			t.Errorf("logs lack the hash prefix %s of a token", h)
		}
	}
	if !strings.Contains(logs, "client=127.0.0.1") {
		t.Errorf("logs lack the client IP")
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	w := newWorld(t)
	w.auth.add("a", "inst-a", echoServer(t))
	c, r := w.session(t, "a") // warm up: gRPC connection, listeners
	echo(t, c, r, "warm")
	c.Close()
	w.waitSessions(t, 0)
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()

	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			nc, err := net.DialTimeout("tcp", w.addr, 2*time.Second)
			if err != nil {
				return
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			token := "a"
			if i%2 == 1 {
				token = "nope"
			}
			io.WriteString(nc, "CONNECT /console?token="+token+" HTTP/1.1\r\n\r\nhello")
			nc.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, nc)
		})
	}
	wg.Wait()
	w.waitSessions(t, 0)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: got %d, want at most %d\n%s", runtime.NumGoroutine(), base+2, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A trusted load balancer's PROXY v1 and v2 headers name the client: its
// address is the one logged and throttled. A malformed header, or none,
// from the load balancer closes the connection unanswered.
func TestProxyProtocolFromTrustedProxies(t *testing.T) {
	trusted, err := edge.ParseTrust([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, func(c *worldConfig) { c.proxy.Trusted = trusted })
	w.auth.add("tok", "inst-1", echoServer(t))
	v2 := func(client string) string {
		h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(client), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6081})
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name, header, client string
	}{
		{"v1", "PROXY TCP4 198.51.100.7 127.0.0.1 40000 6081\r\n", "198.51.100.7"},
		{"v1 IPv6", "PROXY TCP6 2001:db8::7 ::1 40000 6081\r\n", "2001:db8::7"},
		{"v2", v2("203.0.113.9"), "203.0.113.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := w.dial(t)
			io.WriteString(c, tc.header+"CONNECT /console?token=tok HTTP/1.1\r\n\r\n") // in one segment, as HAProxy sends it
			br := bufio.NewReader(c)
			if line, err := br.ReadString('\n'); err != nil || line != "HTTP/1.1 200 OK\r\n" {
				t.Fatalf("got %q (%v), want the 200", line, err)
			}
			br.ReadString('\n')
			echo(t, c, br, "hello through the load balancer")
			if !strings.Contains(w.logs.String(), `msg="session started" client=`+tc.client) {
				t.Errorf("no session logged for client %s:\n%s", tc.client, w.logs)
			}
		})
	}
	for _, tc := range []struct{ name, raw string }{
		{"no header", "CONNECT /console?token=tok HTTP/1.1\r\n\r\n"},
		{"malformed v1", "PROXY TCP4 not-an-address 127.0.0.1 1 2\r\nCONNECT /console?token=tok HTTP/1.1\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := w.dial(t)
			io.WriteString(c, tc.raw)
			if got := readAnswer(t, c); got != "" {
				t.Fatalf("got %q, want the connection closed unanswered", got)
			}
		})
	}
}
