package e2e

// Helpers every e2e test file uses: console URLs and their tokens from the
// REST API, sessions through each proxy as its clients open them, and one
// RFB look at the screen through either.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/deploy/devstack"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// Close codes of novnc-proxy (services/novnc-proxy/internal/closecode),
// repeated here because a service's internals are not importable.
const (
	novncTokenInvalid = 4401
	novncWrongType    = 4406
	novncMoved        = 4409
	novncRevoked      = 4410
	novncThrottled    = 4429
)

// xvpOK is xvp-proxy's whole answer to a good CONNECT.
const xvpOK = "HTTP/1.1 200 OK\r\n\r\n"

// grpcAs is a gRPC connection to addr over mutual TLS, presenting a new
// certificate from the stack's CA that speaks for role under name; it is
// closed when the test ends.
func grpcAs(t *testing.T, w *devstack.World, addr string, role authn.Role, name string) *grpc.ClientConn {
	t.Helper()
	cfg, err := w.ClientTLS(role, name)
	if err != nil {
		t.Fatal(err)
	}
	return grpcConn(t, addr, credentials.NewTLS(cfg))
}

// grpcConn is a gRPC connection to addr with creds, closed when the test ends.
func grpcConn(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// consoleAuthAs dials the stack's consoleauth as a caller of role.
func consoleAuthAs(t *testing.T, w *devstack.World, role authn.Role, name string) consoleauthv1.ConsoleAuthServiceClient {
	t.Helper()
	return consoleauthv1.NewConsoleAuthServiceClient(grpcAs(t, w, w.Addr(w.Ports.ConsoleAuthGRPC), role, name))
}

// consoleAuthClient dials the stack's consoleauth as a proxy does (role
// proxy: it may check tokens).
func consoleAuthClient(t *testing.T, w *devstack.World) consoleauthv1.ConsoleAuthServiceClient {
	t.Helper()
	return consoleAuthAs(t, w, authn.RoleProxy, "e2e-proxy")
}

// consoleAuthAPI dials the stack's consoleauth as the cloud's API layer
// does (role api: it may mint, introspect and revoke).
func consoleAuthAPI(t *testing.T, w *devstack.World) consoleauthv1.ConsoleAuthServiceClient {
	t.Helper()
	return consoleAuthAs(t, w, authn.RoleAPI, devstack.APIName)
}

// restDo sends a request to the REST API with client c (w.RESTClient() for
// the API layer, w.HTTPClient() for a caller without credentials) and
// returns the status and up to 64 KiB of the body.
func restDo(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %.200s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body)
}

// revokeREST revokes an instance's tokens through the REST API as the
// cloud's API layer, with a reason code (registry.RevocationReasons).
func revokeREST(t *testing.T, w *devstack.World, uuid, reason string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, w.RESTURL()+"/v2.1/servers/"+url.PathEscape(uuid)+
		"/console-tokens?reason="+url.QueryEscape(reason), nil)
	if code, body := restDo(t, w.RESTClient(), req); code != http.StatusOK {
		t.Fatalf("revoke %s (%s): got %d %s, want 200", uuid, reason, code, body)
	}
}

// consoleURLOf asks the REST API for a console URL of consoleType (novnc or
// xvpvnc) and fails t when there is none.
func consoleURLOf(t *testing.T, w *devstack.World, uuid, consoleType string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := w.ConsoleURL(ctx, uuid, consoleType)
	if err != nil {
		t.Fatalf("REST get-console-URL %s of %s: %v", consoleType, uuid, err)
	}
	return u
}

// tokenOf is the token inside a novnc or xvpvnc console URL.
func tokenOf(t *testing.T, consoleURL string) string {
	t.Helper()
	token, err := devstack.TokenOf(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// novncWSURL is the WebSocket URL novnc-proxy serves for a console URL's
// token, and the Origin of the console page.
func novncWSURL(t *testing.T, consoleURL string) (wsURL, origin string) {
	t.Helper()
	token := tokenOf(t, consoleURL)
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	return "ws://" + u.Host + "/websockify?token=" + url.QueryEscape(token), u.Scheme + "://" + u.Host
}

// novncDial opens a WebSocket to novnc-proxy as the console page would; it
// is closed when the test ends.
func novncDial(t *testing.T, wsURL, origin string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
	if err != nil {
		t.Fatalf("websocket to novnc-proxy: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// novncConsole opens the console of a novnc console URL as the console page
// does: the WebSocket (for close codes) and its byte stream, on which the
// RFB session starts (see rfbView).
func novncConsole(t *testing.T, consoleURL string) (*websocket.Conn, net.Conn) {
	t.Helper()
	wsURL, origin := novncWSURL(t, consoleURL)
	c := novncDial(t, wsURL, origin)
	return c, websocket.NetConn(context.Background(), c, websocket.MessageBinary)
}

// xvpSession connects to the proxy named by an xvpvnc console URL as Nova's
// Java viewer does, requires exactly the 200 and returns the conn, reading
// through the buffer that read the 200 so no RFB byte is lost. The conn is
// closed when the test ends.
func xvpSession(t *testing.T, consoleURL string) net.Conn {
	t.Helper()
	u, err := url.Parse(consoleURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatalf("dial xvp-proxy at %s: %v", u.Host, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
	br := bufio.NewReader(c)
	ok := make([]byte, len(xvpOK))
	if _, err := io.ReadFull(br, ok); err != nil || string(ok) != xvpOK {
		rest, _ := io.ReadAll(br)
		t.Fatalf("xvp answer: got %q%q (%v), want exactly %q", ok, rest, err, xvpOK)
	}
	c.SetDeadline(time.Time{})
	return &xvpConn{Conn: c, r: br}
}

// xvpConn reads through the reader that parsed the xvp reply.
type xvpConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *xvpConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// xvpRaw sends request to the stack's xvp-proxy and returns its whole
// answer, read until the proxy closes (at most 15 s).
func xvpRaw(t *testing.T, w *devstack.World, request string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.Addr(w.Ports.XVP), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, request)
	got, _ := io.ReadAll(c)
	return string(got)
}

// rfbView runs the RFB handshake over c (a console session through either
// proxy) and reads one framebuffer update, which must have rectangles; what
// names the session in messages. Its reads and writes have 20 s; c is left
// without a deadline.
func rfbView(t *testing.T, what string, c net.Conn) (rfb.ServerInit, rfb.Update) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	si, err := rfb.Handshake(c)
	if err != nil {
		t.Fatalf("%s: RFB handshake: %v", what, err)
	}
	if err := rfb.RequestUpdate(c, si, false); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	u, err := rfb.ReadUpdate(c, si)
	if err != nil {
		t.Fatalf("%s: framebuffer update: %v", what, err)
	}
	if len(u.Rects) == 0 {
		t.Fatalf("%s: framebuffer update without rectangles", what)
	}
	t.Logf("%s: RFB %s %dx%d %q, first update %d rectangles", what, si.Version, si.Width, si.Height, si.Name, len(u.Rects))
	return si, u
}

// waitTokenExpired returns once consoleauth answers NotFound for token, as
// it does for an expired one: tests wait on that, not on a guessed sleep.
func waitTokenExpired(t *testing.T, w *devstack.World, token string) {
	t.Helper()
	ca := consoleAuthClient(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		_, err := ca.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
		if status.Code(err) == codes.NotFound {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("token still valid (last answer: %v)", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
