package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc/codes"

	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/relay"
	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
	"github.com/vncgate/vncgate/testkit/rfb"
	"github.com/vncgate/vncgate/testkit/scrape"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

func TestConsoleRelaysRFBBothWays(t *testing.T) {
	checkNoLeak(t)
	w := newWorld(t, nil)
	nc, si := w.console(w.token())
	if si.Width != 64 || si.Height != 48 {
		t.Fatalf("got a %dx%d framebuffer, want 64x48", si.Width, si.Height)
	}
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	up, err := rfb.ReadUpdate(nc, si)
	if err != nil {
		t.Fatalf("read update: %v", err)
	}
	if len(up.Rects) == 0 || up.Rects[0].DistinctColours() < 2 {
		t.Fatalf("got update %d rects, want a test pattern of several colours", len(up.Rects))
	}
	if err := rfb.SendKey(nc, 0x61, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w.vnc.WaitKey(ctx, 0x61); err != nil {
		t.Fatalf("key 'a' did not reach the VNC server: %v", err)
	}
	if got := w.core.Len(); got != 1 {
		t.Errorf("live sessions: got %d, want 1", got)
	}
	nc.Close()
	waitFor(t, "the session to end", func() bool { return w.core.Len() == 0 && w.vnc.ActiveConns() == 0 })
}

func TestUpgradeOnAnyPathWithTokenFromQueryOrCookie(t *testing.T) {
	w := newWorld(t, nil)
	good := w.token()
	for _, tc := range []struct {
		name   string
		url    string
		cookie string
	}{
		{"root path", w.wsURL("/", good), ""},
		{"websockify path", w.wsURL("/websockify", good), ""},
		{"page path", w.wsURL("/vnc.html", good), ""},
		{"last token wins", w.wsURL("/", "bad") + "&token=" + good, ""},
		{"cookie", w.wsURL("/websockify", ""), "token=" + good},
		{"empty query token falls back to cookie", w.wsURL("/", "") + "?token=", "token=" + good},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := w.dialOpts()
			if tc.cookie != "" {
				opts.HTTPHeader.Set("Cookie", tc.cookie)
			}
			c, _, err := w.dial(tc.url, opts)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := rfb.Handshake(nc); err != nil {
				t.Fatalf("rfb handshake: %v", err)
			}
			nc.Close()
		})
	}
}

func TestSubprotocolNegotiation(t *testing.T) {
	w := newWorld(t, nil)
	for _, tc := range []struct {
		name    string
		offered []string
		want    string // answered subprotocol; "400" for a refusal
	}{
		{"none offered, none answered (noVNC >= 1.2)", nil, ""},
		{"binary offered", []string{"binary"}, "binary"},
		{"binary among others", []string{"base64", "binary"}, "binary"},
		{"base64 only", []string{"base64"}, "400"},
		{"unknown only", []string{"chat"}, "400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := w.dialOpts()
			opts.Subprotocols = tc.offered
			c, resp, err := w.dial(w.wsURL("/", w.token()), opts)
			if tc.want == "400" {
				if err == nil {
					t.Fatalf("got an upgrade with subprotocol %q, want 400", c.Subprotocol())
				}
				wantJSONError(t, resp, http.StatusBadRequest)
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if got := c.Subprotocol(); got != tc.want {
				t.Errorf("got subprotocol %q, want %q", got, tc.want)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

func TestRefusalsAfterUpgradeCarryACloseCode(t *testing.T) {
	w := newWorld(t, nil)
	closedPort := func() int32 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return int32(l.Addr().(*net.TCPAddr).Port)
	}()
	moved := w.token()
	w.auth.Fail(moved, codes.FailedPrecondition) // the instance no longer listens there
	for _, tc := range []struct {
		name   string
		token  func() string
		down   bool
		want   closecode.Code
		result string // of vncgate_proxy_sessions_total
	}{
		{"unknown token", func() string { return "no-such-token" }, false, closecode.TokenInvalid, "token_invalid"},
		{"no token", func() string { return "" }, false, closecode.TokenInvalid, "token_invalid"},
		{"expired token", func() string {
			tok := w.token()
			w.auth.Expire(tok)
			return tok
		}, false, closecode.TokenInvalid, "token_invalid"},
		{"revoked token", func() string { tok := w.token(); w.auth.Revoke(tok); return tok }, false, closecode.TokenInvalid, "token_invalid"},
		{"token of another console type", func() string {
			return w.auth.Mint(w.instance, "xvpvnc", w.vncHost, w.vncPort, time.Minute)
		}, false, closecode.WrongType, "wrong_type"},
		{"console moved", func() string { return moved }, false, closecode.Moved, "console_moved"},
		{"vm unreachable", func() string {
			return w.auth.Mint(w.instance, "novnc", "127.0.0.1", closedPort, time.Minute)
		}, false, closecode.Unreachable, "vnc_unreachable"},
		{"consoleauth unavailable", func() string { return w.token() }, true, closecode.Unavailable, "unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token()
			w.auth.SetUnavailable(tc.down)
			defer w.auth.SetUnavailable(false)
			counted := scrape.Value(t, w.metrics, "vncgate_proxy_sessions_total", "result", tc.result)
			c, _, err := w.dial(w.wsURL("/websockify", tok), w.dialOpts())
			if err != nil {
				t.Fatalf("got %v, want an upgrade closed with %d", err, tc.want)
			}
			ce := wsclose.Read(t, c)
			if ce.Code != websocket.StatusCode(tc.want) {
				t.Fatalf("got close %d %q, want %d", ce.Code, ce.Reason, tc.want)
			}
			if ce.Reason == "" || strings.Contains(ce.Reason, "127.0.0.1") {
				t.Errorf("got reason %q, want a reason without internal addresses", ce.Reason)
			}
			if got := scrape.Value(t, w.metrics, "vncgate_proxy_sessions_total", "result", tc.result); got != counted+1 {
				t.Errorf("sessions_total{result=%q}: got %v, want %v", tc.result, got, counted+1)
			}
		})
	}
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_sessions_total", "result", "relayed"); got != 0 {
		t.Errorf("sessions_total{result=\"relayed\"}: got %v, want 0", got)
	}
	if w.vnc.Accepted() != 0 {
		t.Errorf("the VNC server got %d connections, want 0", w.vnc.Accepted())
	}
}

func TestOriginCheck(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) {
		c.allowedOrigins = []string{"dashboard.example.com"}
		c.trusted = []string{"127.0.0.1"}
	})
	otherPort := w.origin[:strings.LastIndex(w.origin, ":")] + ":1"
	for _, tc := range []struct {
		name   string
		origin string
		proto  string // X-Forwarded-Proto
		token  string // "" for a valid one
		ok     bool
	}{
		{"no origin (not a browser)", "", "", "", true},
		{"our page", w.origin, "", "", true},
		{"host compared case-insensitively", "http://DASHBOARD.Example.com", "", "", true},
		{"allowed host at its default port", "http://dashboard.example.com:80", "", "", true},
		{"allowed host at another port", "http://dashboard.example.com:8443", "", "", false},
		{"our host at another port is another site", otherPort, "", "", false},
		{"other site", "http://evil.example", "", "", false},
		{"other site with a bad token is still 403", "http://evil.example", "", "bad", false},
		{"https page over plain ws", "https://dashboard.example.com", "", "", false},
		{"https page behind a TLS-terminating proxy", "https://dashboard.example.com", "https", "", true},
		{"http page, proxy says https", "http://dashboard.example.com", "https", "", false},
		{"opaque origin", "null", "", "", false},
		{"origin without host", "http://", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
			if tc.origin != "" {
				opts.HTTPHeader.Set("Origin", tc.origin)
			}
			if tc.proto != "" {
				opts.HTTPHeader.Set("X-Forwarded-Proto", tc.proto)
			}
			tok := tc.token
			if tok == "" {
				tok = w.token()
			}
			c, resp, err := w.dial(w.wsURL("/", tok), opts)
			if !tc.ok {
				if err == nil {
					t.Fatal("got an upgrade, want 403 before it")
				}
				wantJSONError(t, resp, http.StatusForbidden)
				return
			}
			if err != nil {
				t.Fatalf("got %v, want the console", err)
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

func TestForwardedProtoIgnoredFromUntrustedPeers(t *testing.T) {
	w := newWorld(t, nil) // trusts nobody
	opts := &websocket.DialOptions{HTTPHeader: http.Header{
		"Origin":            {strings.Replace(w.origin, "http:", "https:", 1)},
		"X-Forwarded-Proto": {"https"},
	}}
	_, resp, err := w.dial(w.wsURL("/", w.token()), opts)
	if err == nil {
		t.Fatal("got an upgrade, want 403: X-Forwarded-Proto from an untrusted peer")
	}
	wantJSONError(t, resp, http.StatusForbidden)
}

func TestHTTPGuards(t *testing.T) {
	w := newWorld(t, nil)
	addr := w.http.Listener.Addr().String()
	for _, tc := range []struct {
		name string
		raw  string
		want string
	}{
		{"open redirect guard", "GET //evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"open redirect guard, backslash", "GET /\\evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"open redirect guard, upgrade", "GET //evil.example/?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST", "POST /vnc_lite.html HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
		{"PUT", "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
		{"OPTIONS", "OPTIONS /vnc.html HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
		{"HEAD", "HEAD /vnc_lite.html HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
		{"upgrade with HEAD", "HEAD /?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"upgrade without key", "GET /?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"upgrade of an old version", "GET /?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"page", "GET /vnc_lite.html HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
		{"health", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200 OK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, addr, []byte(tc.raw)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	resp, err := http.Post(w.base+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Allow"); got != "GET, HEAD" {
		t.Errorf("Allow: got %q, want %q", got, "GET, HEAD")
	}
	wantJSONError(t, resp, http.StatusMethodNotAllowed)
}

func TestBadHandshakesAreClosedWhileSessionsGoOn(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.headerTimeout = 300 * time.Millisecond })
	nc, si := w.console(w.token())
	addr := w.http.Listener.Addr().String()

	huge := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 256<<10) + "\r\n\r\n"
	var wg sync.WaitGroup
	for _, tc := range []struct {
		name, raw, want string
	}{
		{"garbage", "\x16\x03\x01garbage\x00\xff\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"not http", "SSH-2.0-OpenSSH_9.6\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"oversized head", huge, "HTTP/1.1 431 Request Header Fields Too Large"},
		{"never-ending head (slowloris)", "GET / HTTP/1.1\r\nHost: x\r\n", "closed: EOF"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := rawRequest(t, addr, []byte(tc.raw)); got != tc.want {
				t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
			}
		}()
	}
	// The live session keeps working meanwhile.
	for i := 0; i < 20; i++ {
		if err := rfb.RequestUpdate(nc, si, false); err != nil {
			t.Fatal(err)
		}
		if _, err := rfb.ReadUpdate(nc, si); err != nil {
			t.Fatalf("update %d during bad handshakes: %v", i, err)
		}
	}
	wg.Wait()
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatalf("update after bad handshakes: %v", err)
	}
}

// A client address with too many invalid tokens is slowed down, never
// refused: a valid token that shares its address and token prefix (people
// behind one NAT as a guesser) still gets its console. Only invalid tokens
// count: Origin refusals and consoleauth outages do not.
func TestThrottledAddressStillConnectsWithAValidToken(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) {
		c.failLimit = 3
		c.trusted = []string{"127.0.0.0/8"}
	})
	from := func(ip, origin, token string) (*websocket.Conn, *http.Response, error) {
		opts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}, "X-Forwarded-For": {ip}}}
		return w.dial(w.wsURL("/", token), opts)
	}
	for i := 0; i < 3; i++ {
		c, _, err := from("192.0.2.1", w.origin, "guess")
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.TokenInvalid) {
			t.Fatalf("bad token %d: got close %d, want %d", i, ce.Code, closecode.TokenInvalid)
		}
	}
	// A valid token whose prefix the guesses throttled.
	tok := w.token()
	for !w.ban.Throttled("192.0.2.1", tok) {
		tok = w.token()
	}
	c, _, err := from("192.0.2.1", w.origin, tok)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	nc := newClientStream(t, c)
	if _, err := rfb.Handshake(nc); err != nil {
		t.Fatalf("a valid token from a throttled address: %v, want its console", err)
	}
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_token_checks_throttled_total"); got != 1 {
		t.Errorf("token_checks_throttled_total: got %v, want 1", got)
	}

	// Cross-origin guesses are refused before the token: they do not count.
	for i := 0; i < 10; i++ {
		_, resp, err := from("192.0.2.2", "http://evil.example", "guess")
		if err == nil {
			t.Fatal("a cross-origin upgrade: got a WebSocket, want 403")
		}
		wantJSONError(t, resp, http.StatusForbidden)
	}
	// Nor does an unavailable consoleauth.
	w.auth.SetUnavailable(true)
	for i := 0; i < 5; i++ {
		c, _, err := from("192.0.2.2", w.origin, "guess")
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.Unavailable) {
			t.Fatalf("during the outage: got close %d, want %d", ce.Code, closecode.Unavailable)
		}
	}
	w.auth.SetUnavailable(false)
	if w.ban.Throttled("192.0.2.2", "guess") {
		t.Error("Origin refusals and an outage throttled the address")
	}
}

func TestMaxSessionsPerInstance(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.maxPerInstance = 1 })
	first, _ := w.console(w.token())
	c, _, err := w.dial(w.wsURL("/", w.token()), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.Throttled) {
		t.Fatalf("second session: got close %d %q, want %d", ce.Code, ce.Reason, closecode.Throttled)
	}
	other := w.auth.Mint("another-instance", "novnc", w.vncHost, w.vncPort, time.Minute)
	w.console(other) // another instance is not capped
	first.Close()
	waitFor(t, "the first session to end", func() bool { return w.core.Len() == 1 })
	w.console(w.token())
}

func TestSessionEndsWith(t *testing.T) {
	for _, tc := range []struct {
		name   string
		adjust func(*worldConfig)
		act    func(w *world) // after the RFB handshake
		want   closecode.Code
		reason string
	}{
		{"revocation", nil, func(w *world) {
			time.Sleep(5 * time.Millisecond) // RevokedAt after the check, whatever the clock's grain
			w.core.Revoke(w.instance, registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
		}, closecode.Revoked, "the instance was stopped"},
		{"idle timeout", func(c *worldConfig) { c.core.IdleTimeout = 300 * time.Millisecond }, nil, closecode.IdleTimeout, "idle"},
		{"max session length", func(c *worldConfig) { c.core.MaxSessionLength = 300 * time.Millisecond }, nil, closecode.SessionTooLong, "session longer"},
		{"token expiry when enforced", func(c *worldConfig) { c.core.EnforceSessionTimeout = true }, nil, closecode.TokenExpired, "expired"},
		{"shutdown", nil, func(w *world) { w.srv.EndSessions() }, closecode.ShuttingDown, "shutting down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.adjust)
			tok := w.token()
			if tc.want == closecode.TokenExpired {
				tok = w.auth.Mint(w.instance, "novnc", w.vncHost, w.vncPort, 700*time.Millisecond)
			}
			nc, _ := w.console(tok)
			if tc.act != nil {
				tc.act(w)
			}
			code, reason := closeCodeOfNetConn(t, nc)
			if code != websocket.StatusCode(tc.want) || !strings.Contains(reason, tc.reason) {
				t.Fatalf("got close %d %q, want %d with %q", code, reason, tc.want, tc.reason)
			}
			waitFor(t, "the VNC connection to close", func() bool { return w.vnc.ActiveConns() == 0 })
		})
	}
}

func TestIdleTimeoutSparesActiveSessions(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.core.IdleTimeout = 300 * time.Millisecond })
	nc, si := w.console(w.token())
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		if err := rfb.RequestUpdate(nc, si, false); err != nil {
			t.Fatal(err)
		}
		if _, err := rfb.ReadUpdate(nc, si); err != nil {
			t.Fatalf("an active session was cut: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPings(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.opts.PingInterval = 50 * time.Millisecond })

	// A client that never reads answers no ping: its session is ended.
	if _, _, err := w.dial(w.wsURL("/", w.token()), w.dialOpts()); err != nil {
		t.Fatal(err)
	}

	// A client that answers pings (it reads often) keeps its session.
	var mu sync.Mutex
	pings := 0
	opts := w.dialOpts()
	opts.OnPingReceived = func(context.Context, []byte) bool { mu.Lock(); pings++; mu.Unlock(); return true }
	c, _, err := w.dial(w.wsURL("/", w.token()), opts)
	if err != nil {
		t.Fatal(err)
	}
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	si, err := rfb.Handshake(nc)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for w.core.Len() > 1 || time.Since(start) < 400*time.Millisecond {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the session of a client that answers no ping was not ended")
		}
		if err := rfb.RequestUpdate(nc, si, false); err != nil {
			t.Fatal(err)
		}
		if _, err := rfb.ReadUpdate(nc, si); err != nil {
			t.Fatalf("the session of a client that answers pings was cut: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	got := pings
	mu.Unlock()
	if got < 3 {
		t.Errorf("got %d pings in %s, want several at 50ms", got, time.Since(start))
	}
}

func TestTextFramesAreRefused(t *testing.T) {
	w := newWorld(t, nil)
	c, _, err := w.dial(w.wsURL("/", w.token()), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("RFB 003.008\n")); err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusUnsupportedData {
		t.Fatalf("got close %d %q, want 1003", ce.Code, ce.Reason)
	}
}

// echoServer is a VNC stand-in that echoes bytes, then closes when the
// client half-closes.
func echoServer(t *testing.T) (string, int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	a := l.Addr().(*net.TCPAddr)
	return "127.0.0.1", int32(a.Port)
}

func TestLargeTransfersArriveIntactWithBackPressure(t *testing.T) {
	checkNoLeak(t)
	w := newWorld(t, func(c *worldConfig) { c.core.IdleTimeout = time.Minute })
	host, port := echoServer(t)
	tok := w.auth.Mint(w.instance, "novnc", host, port, time.Minute)
	c, _, err := w.dial(w.wsURL("/", tok), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(relay.BufferSize) // one message per chunk the proxy read
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	data := make([]byte, 8<<20)
	rand.Read(data)
	sent := make(chan error, 1)
	go func() {
		// Messages of many sizes, across the copy buffer's size.
		sizes := []int{1, 7, 100, 4095, 32 << 10, 200 << 10, relay.BufferSize + 1}
		for off, i := 0, 0; off < len(data); i++ {
			n := min(sizes[i%len(sizes)], len(data)-off)
			if err := c.Write(ctx, websocket.MessageBinary, data[off:off+n]); err != nil {
				sent <- err
				return
			}
			off += n
		}
		sent <- nil
	}()
	var got bytes.Buffer
	for got.Len() < len(data) {
		typ, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("after %d bytes: %v", got.Len(), err)
		}
		if typ != websocket.MessageBinary {
			t.Fatalf("got a %v message, want binary", typ)
		}
		got.Write(b)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("echoed bytes differ from those sent")
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "the session to end", func() bool { return w.core.Len() == 0 })
}

func TestVNCServerClosingEndsTheSessionNormally(t *testing.T) {
	w := newWorld(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("RFB 003.008\n"))
			c.Close()
		}
	}()
	tok := w.auth.Mint(w.instance, "novnc", "127.0.0.1", int32(l.Addr().(*net.TCPAddr).Port), time.Minute)
	c, _, err := w.dial(w.wsURL("/", tok), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil || string(b) != "RFB 003.008\n" {
		t.Fatalf("got %q, %v; want the server's greeting", b, err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusNormalClosure || !strings.Contains(ce.Reason, "VNC server closed") {
		t.Fatalf("got close %d %q, want 1000 saying the VNC server closed", ce.Code, ce.Reason)
	}
}

func TestDrain(t *testing.T) {
	w := newWorld(t, nil)
	nc, si := w.console(w.token())
	w.srv.Drain()
	resp, err := http.Get(w.base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("healthz while draining: got %d, want 503", resp.StatusCode)
	}
	c, _, err := w.dial(w.wsURL("/", w.token()), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusServiceRestart {
		t.Errorf("new console while draining: got close %d %q, want 1012", ce.Code, ce.Reason)
	}
	if err := rfb.RequestUpdate(nc, si, false); err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.ReadUpdate(nc, si); err != nil {
		t.Fatalf("a live session was cut by draining: %v", err)
	}
}

func TestCloseReasonFitsAFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int
	}{
		{"short", "stopped", 7},
		{"long ascii", strings.Repeat("a", 300), 123},
		{"long multibyte cut at a rune", strings.Repeat("é", 100), 122},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := len(closeReason(tc.in)); got != tc.want {
				t.Errorf("got %d bytes, want %d", got, tc.want)
			}
		})
	}
}

// A hypervisor closes a stopped VM's VNC socket before it reports the stop:
// the session waits for the revocation so the user reads why.
func TestVNCServerClosingWaitsForTheRevocationReason(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.opts.RevocationGrace = 3 * time.Second })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("RFB 003.008\n"))
			c.Close()
		}
	}()
	tok := w.auth.Mint(w.instance, "novnc", "127.0.0.1", int32(l.Addr().(*net.TCPAddr).Port), time.Minute)
	c, _, err := w.dial(w.wsURL("/", tok), w.dialOpts())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.Read(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the VNC server has closed; no revocation yet
	w.core.Revoke(w.instance, registry.Revocation{Reason: "the instance was stopped", RevokedAt: time.Now()})
	if ce := wsclose.Read(t, c); ce.Code != websocket.StatusCode(closecode.Revoked) || ce.Reason != "the instance was stopped" {
		t.Fatalf("got close %d %q, want %d with the revocation's reason", ce.Code, ce.Reason, closecode.Revoked)
	}
}

// TestClientWithoutOriginGetsNovasAnswer: a client that sends no Origin is
// not a browser (OpenStack tempest's console test, scripts); it reads any
// byte after the upgrade as a frame, so a refusal is the upgrade and a close
// without a frame, as Nova's proxy answers. A good token still connects.
func TestClientWithoutOriginGetsNovasAnswer(t *testing.T) {
	w := newWorld(t, nil)
	upgrade := func(token string) (head string, rest []byte) {
		t.Helper()
		c, err := net.Dial("tcp", strings.TrimPrefix(w.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// As tempest sends it: the token in a cookie, no Origin.
		fmt.Fprintf(c, "GET /websockify HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: token=%s\r\n\r\n",
			strings.TrimPrefix(w.base, "http://"), token)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the upgrade answer: %v", err)
		}
		resp.Body.Close()
		if token != "bad" {
			rest = make([]byte, 12)
			if _, err := io.ReadFull(br, rest); err != nil {
				t.Fatalf("reading the first frame: %v", err)
			}
			return resp.Status, rest
		}
		rest, err = io.ReadAll(br)
		if err != nil {
			t.Fatalf("reading after the upgrade: %v", err)
		}
		return resp.Status, rest
	}
	if status, rest := upgrade("bad"); status != "101 Switching Protocols" || len(rest) != 0 {
		t.Errorf("bad token: got %q then %q, want 101 and a close without a frame", status, rest)
	}
	// A binary frame (0x82) carrying the VNC server's "RFB 003.008\n".
	if status, rest := upgrade(w.token()); status != "101 Switching Protocols" || rest[0] != 0x82 || !strings.HasPrefix(string(rest[2:]), "RFB 003.") {
		t.Errorf("good token: got %q then %q, want 101 and the RFB version in a binary frame", status, rest)
	}
}

// A request body sent a byte every 2 s must not hold a connection past the
// handshake timeout, whatever the handler does with the body.
func TestSlowBodiesAreCutAtTheHandshakeTimeout(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) { c.opts.HandshakeTimeout = time.Second })
	addr := w.http.Listener.Addr().String()
	for _, head := range []string{
		"POST /vnc_lite.html HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", // refused with 405
		"GET /vnc_lite.html HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",  // served a page
		"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		t.Run(strings.Fields(head)[0]+" "+strings.Fields(head)[1], func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, head)
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Second):
					}
					if _, err := c.Write([]byte("a")); err != nil {
						return
					}
				}
			}()
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang
			_, err = io.Copy(io.Discard, c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("connection still open after %s of a slow body, want it closed at the 1s handshake timeout", time.Since(start).Round(time.Second))
			}
			t.Logf("closed after %s (%v)", time.Since(start).Round(time.Millisecond), err)
		})
	}
}

// After the VNC server closes, a session whose client never answers (nor
// closes) must still end: the proxy sends its close frame and, without an
// answer, closes the connection.
func TestSessionEndsWhenTheVNCServerClosesAndTheClientDoesNot(t *testing.T) {
	w := newWorld(t, nil)
	vnc := loopbackOnce(t, func(c net.Conn) { c.Write([]byte("RFB 003.008\n")) }) // then closes
	tok := w.auth.Mint(w.instance, "novnc", "127.0.0.1", vnc, time.Minute)
	c, err := net.Dial("tcp", w.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /?token="+tok+" HTTP/1.1\r\nHost: x\r\nOrigin: "+w.origin+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(30 * time.Second)) // bounds a hang
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 101 ") {
		t.Fatalf("upgrade: got %q (%v), want 101", status, err)
	}
	// The client reads nothing more, sends nothing, closes nothing.
	waitFor(t, "the session to end", func() bool { return w.core.Len() == 0 })
	if got := scrape.Value(t, w.metrics, "vncgate_proxy_session_ended_total", "reason", "server_closed"); got != 1 {
		t.Errorf("session_ended_total{reason=server_closed}: got %v, want 1", got)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Errorf("the proxy did not close the client's connection: %v", err)
	}
}

// loopbackOnce serves one connection on loopback with handle, closing it
// when handle returns, and returns the port.
func loopbackOnce(t *testing.T, handle func(net.Conn)) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err == nil {
			handle(c)
			c.Close()
		}
	}()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// Behind a trusted proxy the listener sees one peer: each forwarded client
// is capped on its upgrades.
func TestForwardedClientsAreCappedPerAddress(t *testing.T) {
	w := newWorld(t, func(c *worldConfig) {
		c.trusted = []string{"127.0.0.0/8"}
		c.opts.Caps = edge.NewCaps(0, 1, nil)
	})
	from := func(ip string) (*websocket.Conn, *http.Response, error) {
		opts := w.dialOpts()
		opts.HTTPHeader.Set("X-Forwarded-For", ip)
		return w.dial(w.wsURL("/", w.token()), opts)
	}
	c, _, err := from("192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rfb.Handshake(newClientStream(t, c)); err != nil {
		t.Fatalf("first console of 192.0.2.1: %v", err)
	}
	_, resp, err := from("192.0.2.1")
	if err == nil {
		t.Fatal("a second console of 192.0.2.1 past its cap of 1: got it, want 503")
	}
	if msg := wantJSONError(t, resp, http.StatusServiceUnavailable); msg != "too many connections from this address" {
		t.Errorf("got %q, want too many connections from this address", msg)
	}
	c2, _, err := from("192.0.2.2")
	if err != nil {
		t.Fatalf("another client behind the same proxy: %v", err)
	}
	c2.CloseNow()
	c.Close(websocket.StatusNormalClosure, "")
	// Its place comes back once the proxy has seen the console end.
	waitFor(t, "a console of 192.0.2.1 after its first ended", func() bool {
		c3, _, err := from("192.0.2.1")
		if err != nil {
			return false
		}
		c3.CloseNow()
		return true
	})
}
