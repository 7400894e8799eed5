package rfbproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// Markers that follow the handshake on each side: the client's ClientInit
// (shared) and two more bytes, and two bytes standing for the ServerInit.
// Handshake must leave them unread, whole, on the conns it hands back.
var (
	clientNext = []byte{1, 'c', 'i'}
	serverNext = []byte("SI")
)

// script runs f on c in its own goroutine; its error arrives on the
// channel. A failing script closes c, as a real peer hangs up.
func script(c net.Conn, f func(net.Conn) error) <-chan error {
	done := make(chan error, 1)
	go func() {
		err := f(c)
		if err != nil {
			c.Close()
		}
		done <- err
	}()
	return done
}

// clientSaw is what a scripted client was told.
type clientSaw struct {
	types   []byte // offered (3.7, 3.8), or the one the server chose (3.3)
	results []uint32
	reason  string // the failure reason, when refused
	refused bool
}

// rfbClient is a console client speaking version ("RFB 003.00X\n") that
// chooses choose from the types offered and then sends clientNext.
func rfbClient(version string, choose byte, saw *clientSaw) func(net.Conn) error {
	return func(c net.Conn) error {
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("client: read version: %w", err)
		}
		if string(b) != version38 {
			return fmt.Errorf("client: got version %q, want %q", b, version38)
		}
		if _, err := io.WriteString(c, version); err != nil {
			return err
		}
		readReason := func() error {
			saw.refused = true
			if _, err := io.ReadFull(c, b[:4]); err != nil {
				return fmt.Errorf("client: read reason length: %w", err)
			}
			r := make([]byte, binary.BigEndian.Uint32(b[:4]))
			if _, err := io.ReadFull(c, r); err != nil {
				return fmt.Errorf("client: read reason: %w", err)
			}
			saw.reason = string(r)
			return nil
		}
		if version == "RFB 003.003\n" || version == "RFB 003.005\n" {
			if _, err := io.ReadFull(c, b[:4]); err != nil {
				return fmt.Errorf("client: read security type: %w", err)
			}
			t := binary.BigEndian.Uint32(b[:4])
			if t == 0 {
				return readReason()
			}
			saw.types = []byte{byte(t)}
		} else {
			if _, err := io.ReadFull(c, b[:1]); err != nil {
				return fmt.Errorf("client: read security types: %w", err)
			}
			if b[0] == 0 {
				return readReason()
			}
			saw.types = make([]byte, b[0])
			if _, err := io.ReadFull(c, saw.types); err != nil {
				return err
			}
			if _, err := c.Write([]byte{choose}); err != nil {
				return err
			}
			if version == version38 {
				if _, err := io.ReadFull(c, b[:4]); err != nil {
					return fmt.Errorf("client: read security result: %w", err)
				}
				saw.results = append(saw.results, binary.BigEndian.Uint32(b[:4]))
				if saw.results[0] != 0 {
					return readReason()
				}
			}
		}
		_, err := c.Write(clientNext)
		return err
	}
}

// rfbServer is an RFB 3.8 VNC server offering types; after runs once the
// proxy chose one.
func rfbServer(types []byte, after func(c net.Conn, chosen byte) error) func(net.Conn) error {
	return func(c net.Conn) error {
		if _, err := io.WriteString(c, version38); err != nil {
			return err
		}
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("server: read version: %w", err)
		}
		if string(b) != version38 {
			return fmt.Errorf("server: got version %q, want %q", b, version38)
		}
		if _, err := c.Write(append([]byte{byte(len(types))}, types...)); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			return fmt.Errorf("server: read chosen type: %w", err)
		}
		return after(c, b[0])
	}
}

// noneOK accepts None: SecurityResult OK and serverNext in one write, as
// eager as a server can be.
func noneOK(c net.Conn, chosen byte) error {
	if chosen != typeNone {
		return fmt.Errorf("server: proxy chose %d, want None", chosen)
	}
	_, err := c.Write(append([]byte{0, 0, 0, 0}, serverNext...))
	return err
}

// raw writes b whatever happens, then waits for the proxy to hang up.
func raw(b []byte) func(net.Conn) error {
	return func(c net.Conn) error {
		c.Write(b)
		io.Copy(io.Discard, c)
		return nil
	}
}

func withReason(prefix []byte, reason string) []byte {
	return append(binary.BigEndian.AppendUint32(prefix, uint32(len(reason))), reason...)
}

// outcome is one Handshake between scripted (or real) peers.
type outcome struct {
	vnc                  net.Conn
	res                  Result
	err                  error
	clientEnd, serverEnd net.Conn // the peers' own ends
	proxyClient          net.Conn // the client's conn as Handshake got it
	clientDone           <-chan error
	serverDone           <-chan error
}

// handshakeWith runs Handshake between a client and a server script; on
// failure it closes the proxy's conns, as the session core does.
func handshakeWith(t *testing.T, ctx context.Context, cfg *Config, host string, server, client func(net.Conn) error) *outcome {
	t.Helper()
	o := &outcome{}
	var proxyServer net.Conn
	o.clientEnd, o.proxyClient = loopback.Pair(t)
	proxyServer, o.serverEnd = loopback.Pair(t)
	o.serverDone = script(o.serverEnd, server)
	o.clientDone = script(o.clientEnd, client)
	o.vnc, o.res, o.err = Handshake(ctx, o.proxyClient, proxyServer, host, cfg)
	if o.err != nil {
		o.proxyClient.Close()
		proxyServer.Close()
		if o.vnc != nil {
			t.Errorf("Handshake failed (%v) but returned a conn", o.err)
		}
		return o
	}
	t.Cleanup(func() { o.vnc.Close() })
	return o
}

// wait returns a script's error, failing t if it does not end.
func wait(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second): // a hang, not a timing assumption
		t.Fatalf("%s script did not end", what)
		return nil
	}
}

// expectNext checks that the bytes after the handshake are there, whole:
// clientNext from the client, serverNext from the server.
func (o *outcome) expectNext(t *testing.T) {
	t.Helper()
	if err := wait(t, "client", o.clientDone); err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := wait(t, "server", o.serverDone); err != nil {
		t.Fatalf("server: %v", err)
	}
	for _, side := range []struct {
		name string
		r    io.Reader
		want []byte
	}{{"client", o.proxyClient, clientNext}, {"server", o.vnc, serverNext}} {
		got := make([]byte, len(side.want))
		if _, err := io.ReadFull(side.r, got); err != nil || !bytes.Equal(got, side.want) {
			t.Errorf("next bytes from the %s: got %q (%v), want %q", side.name, got, err, side.want)
		}
	}
}

// wantErr checks err wraps exactly the sentinel want and has text in it.
func wantErr(t *testing.T, err, want error, text string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", want)
	}
	n := 0
	for _, s := range []error{ErrClient, ErrSecurity, ErrNotVNC} {
		if errors.Is(err, s) {
			n++
		}
	}
	if !errors.Is(err, want) || n != 1 {
		t.Fatalf("got %v, want it to wrap %v only", err, want)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("got %q, want it to say %q", err, text)
	}
}

var noneOnly = &Config{AuthSchemes: []string{"none"}}

func TestClientVersions(t *testing.T) {
	for _, tc := range []struct {
		name, version string
		wantVersion   string
		wantResults   int // SecurityResults the client gets
	}{
		{"3.8: types, choice, SecurityResult", "RFB 003.008\n", "3.8", 1},
		{"3.7: types, choice, no SecurityResult", "RFB 003.007\n", "3.7", 0},
		{"3.3: the server picks, no SecurityResult", "RFB 003.003\n", "3.3", 0},
		{"3.5 is 3.3 (RFC 6143 7.1.1)", "RFB 003.005\n", "3.3", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var saw clientSaw
			o := handshakeWith(t, context.Background(), noneOnly, "127.0.0.1",
				rfbServer([]byte{typeNone}, noneOK), rfbClient(tc.version, typeNone, &saw))
			if o.err != nil {
				t.Fatal(o.err)
			}
			o.expectNext(t)
			if want := (Result{Version: tc.wantVersion, SecurityType: typeNone}); o.res != want {
				t.Errorf("result: got %+v, want %+v", o.res, want)
			}
			if len(saw.types) != 1 || saw.types[0] != typeNone || len(saw.results) != tc.wantResults || saw.refused {
				t.Errorf("client saw %+v, want type None and %d SecurityResult(s)", saw, tc.wantResults)
			}
		})
	}
}

func TestChoosesFirstServerTypeAllowed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		schemes []string
		offered []byte
		want    byte
	}{
		{"nil config: none", nil, []byte{2, 1}, typeNone},
		{"server order wins over configuration order", []string{"vencrypt", "none"}, []byte{1, 19}, typeNone},
		{"case-insensitive", []string{"NONE"}, []byte{16, 1}, typeNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *Config
			if tc.schemes != nil {
				cfg = &Config{AuthSchemes: tc.schemes}
			}
			var saw clientSaw
			o := handshakeWith(t, context.Background(), cfg, "127.0.0.1",
				rfbServer(tc.offered, noneOK), rfbClient(version38, typeNone, &saw))
			if o.err != nil {
				t.Fatal(o.err)
			}
			o.expectNext(t)
			if o.res.SecurityType != tc.want {
				t.Errorf("chose %d, want %d", o.res.SecurityType, tc.want)
			}
		})
	}
}

// TestRefusals covers every way a handshake fails: what the client is told
// in its version's shape, and the sentinel and cause of the error.
func TestRefusals(t *testing.T) {
	longReason := strings.Repeat("x", maxReason+1)
	refusedBy := func(reason string) func(net.Conn, byte) error {
		return func(c net.Conn, _ byte) error {
			_, err := c.Write(withReason([]byte{0, 0, 0, 1}, reason))
			return err
		}
	}
	for _, tc := range []struct {
		name          string
		cfg           *Config
		server        func(net.Conn) error
		version       string // the client's; 3.8 when empty
		choose        byte   // the client's choice; None when 0
		sentinel      error
		cause         string
		clientReason  string // "" when the client must not be told
		clientRefused bool
	}{
		{name: "server offers only VncAuth",
			server:   rfbServer([]byte{2}, func(net.Conn, byte) error { return nil }),
			sentinel: ErrSecurity, cause: "offers security types [2 (VNC Authentication)]; auth_schemes allows [1 (None)]",
			clientReason: refusedReason, clientRefused: true},
		{name: "server offers only VncAuth, 3.7 client", version: "RFB 003.007\n",
			server:   rfbServer([]byte{2}, func(net.Conn, byte) error { return nil }),
			sentinel: ErrSecurity, cause: "offers security types", clientReason: refusedReason, clientRefused: true},
		{name: "server offers only VncAuth, 3.3 client", version: "RFB 003.003\n",
			server:   rfbServer([]byte{2}, func(net.Conn, byte) error { return nil }),
			sentinel: ErrSecurity, cause: "offers security types", clientReason: refusedReason, clientRefused: true},
		{name: "server offers None, auth_schemes vencrypt", cfg: &Config{AuthSchemes: []string{"vencrypt"}},
			server:   rfbServer([]byte{1}, func(net.Conn, byte) error { return nil }),
			sentinel: ErrSecurity, cause: "offers security types [1 (None)]; auth_schemes allows [19 (VeNCrypt)]",
			clientReason: refusedReason, clientRefused: true},
		{name: "not a VNC server", server: raw([]byte("SSH-2.0-OpenSSH_9.2p1\r\n")),
			sentinel: ErrNotVNC, cause: `"SSH-2.0-Open" are not an RFB version`, clientReason: refusedReason, clientRefused: true},
		{name: "not a VNC server, 3.3 client", version: "RFB 003.003\n", server: raw([]byte("HTTP/1.1 400 Bad Request\r\n")),
			sentinel: ErrNotVNC, cause: "not an RFB version", clientReason: refusedReason, clientRefused: true},
		{name: "server closes at once", server: func(c net.Conn) error { return c.Close() },
			sentinel: ErrNotVNC, cause: "read the VNC server's RFB version: EOF", clientReason: refusedReason, clientRefused: true},
		{name: "server speaks RFB 3.3", server: raw([]byte("RFB 003.003\n")),
			sentinel: ErrSecurity, cause: "speaks RFB 3.3; the security proxy needs 3.8", clientReason: refusedReason, clientRefused: true},
		{name: "server failure reason passed on", server: raw(withReason([]byte(version38+"\x00"), "Too many security failures")),
			sentinel: ErrSecurity, cause: `refused the connection: "Too many security failures"`,
			clientReason: "Too many security failures", clientRefused: true},
		{name: "server failure reason passed on, 3.3 client", version: "RFB 003.003\n",
			server:   raw(withReason([]byte(version38+"\x00"), "Too many security failures")),
			sentinel: ErrSecurity, cause: "Too many security failures", clientReason: "Too many security failures", clientRefused: true},
		{name: "server failure reason too long", server: raw(withReason([]byte(version38+"\x00"), longReason)),
			sentinel: ErrSecurity, cause: "refused the connection", clientReason: refusedReason, clientRefused: true},
		{name: "server SecurityResult failed for None, 3.7 client", version: "RFB 003.007\n",
			server:   rfbServer([]byte{1}, refusedBy("no access for you")),
			sentinel: ErrSecurity, cause: `refused the security handshake: "no access for you"`,
			clientReason: "no access for you", clientRefused: true},
		{name: "unknown auth scheme", cfg: &Config{AuthSchemes: []string{"none", "vnc"}},
			server:   rfbServer([]byte{1}, noneOK),
			sentinel: ErrSecurity, cause: `"vnc" is not a scheme`, clientReason: refusedReason, clientRefused: true},
		{name: "3.8 client chooses VncAuth", choose: 2, server: rfbServer([]byte{1}, noneOK),
			sentinel: ErrClient, cause: "chose security type 2 (VNC Authentication)", clientReason: wrongTypeReason, clientRefused: true},
		{name: "3.7 client chooses VncAuth: no reason in 3.7", version: "RFB 003.007\n", choose: 2, server: rfbServer([]byte{1}, noneOK),
			sentinel: ErrClient, cause: "only None (1) is offered"},
		{name: "client speaks HTTP", version: "GET / HTTP/1.", server: rfbServer([]byte{1}, noneOK),
			sentinel: ErrClient, cause: `"GET / HTTP/1" are not an RFB version`},
		{name: "client speaks RFB 4.0", version: "RFB 004.000\n", server: rfbServer([]byte{1}, noneOK),
			sentinel: ErrClient, cause: "speaks RFB 4.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			version, choose := tc.version, tc.choose
			if version == "" {
				version = version38
			}
			if choose == 0 {
				choose = typeNone
			}
			cfg := tc.cfg
			if cfg == nil {
				cfg = noneOnly
			}
			var saw clientSaw
			o := handshakeWith(t, context.Background(), cfg, "127.0.0.1", tc.server, rfbClient(version, choose, &saw))
			wantErr(t, o.err, tc.sentinel, tc.cause)
			clientErr := wait(t, "client", o.clientDone)
			if saw.refused != tc.clientRefused || saw.reason != tc.clientReason {
				t.Errorf("client saw %+v (script: %v), want refused=%v with reason %q", saw, clientErr, tc.clientRefused, tc.clientReason)
			}
		})
	}
}

func TestClientLeaves(t *testing.T) {
	o := handshakeWith(t, context.Background(), noneOnly, "127.0.0.1", rfbServer([]byte{1}, noneOK),
		func(c net.Conn) error { return c.Close() })
	wantErr(t, o.err, ErrClient, "read the client's RFB version")
}

// TestContextEndsHandshake: a server that never speaks and a client that
// never answers each hold the handshake until ctx ends, which closes both
// conns; the error names ctx's cause.
func TestContextEndsHandshake(t *testing.T) {
	stuck := errors.New("test gave up")
	for _, tc := range []struct {
		name     string
		server   func(net.Conn) error // nil: silent
		sentinel error
	}{
		{"silent server", nil, ErrNotVNC},
		{"silent client", rfbServer([]byte{1}, noneOK), ErrClient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			clientEnd, proxyClient := loopback.Pair(t)
			proxyServer, serverEnd := loopback.Pair(t)
			serverDone := make(<-chan error)
			if tc.server != nil {
				serverDone = script(serverEnd, tc.server)
			}
			// Cancel once the proxy waits on a peer: when the client got
			// the version (silent client) or at once (silent server).
			go func() {
				if tc.sentinel == ErrClient {
					io.ReadFull(clientEnd, make([]byte, 12))
				}
				cancel(stuck)
			}()
			_, _, err := Handshake(ctx, proxyClient, proxyServer, "127.0.0.1", noneOnly)
			wantErr(t, err, tc.sentinel, stuck.Error())
			if !errors.Is(err, stuck) {
				t.Errorf("got %v, want it to wrap ctx's cause", err)
			}
			if tc.server != nil {
				wait(t, "server", serverDone)
			}
			for _, c := range []net.Conn{clientEnd, serverEnd} {
				// EOF, or a reset when the proxy left bytes unread.
				if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("peer %s: got %v, want EOF: the proxy closed both conns", c.LocalAddr(), err)
				}
			}
		})
	}
}

// vencryptWorld is a CA, a VNC server certificate for 127.0.0.1 and a
// client certificate for the proxy.
type vencryptWorld struct {
	ca                  *certs.CA
	server, client      tls.Certificate
	foreign             tls.Certificate // a client certificate of another CA
	foreignPool         *x509.CertPool
	serverTLS, proxyTLS *tls.Config
}

func newVeNCryptWorld(t *testing.T) *vencryptWorld {
	t.Helper()
	w := &vencryptWorld{ca: certs.TestCA(t)}
	var err error
	if w.server, err = w.ca.Issue("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if w.client, err = w.ca.Issue("vncgate proxy"); err != nil {
		t.Fatal(err)
	}
	w.foreign, w.foreignPool = certs.TestCert(t, "vncgate proxy")
	w.serverTLS = &tls.Config{Certificates: []tls.Certificate{w.server}, ClientCAs: w.ca.Pool()}
	w.proxyTLS = &tls.Config{Certificates: []tls.Certificate{w.client}, RootCAs: w.ca.Pool()}
	return w
}

// vencryptServer is the demo server's VeNCrypt side (testkit/rfb), then
// serverNext inside TLS.
func vencryptServer(v *rfb.VeNCrypt) func(net.Conn) error {
	return func(c net.Conn) error {
		tc, _, err := rfb.AcceptSecurity(c, v)
		if err != nil {
			return err
		}
		_, err = tc.Write(serverNext)
		return err
	}
}

func TestVeNCrypt(t *testing.T) {
	w := newVeNCryptWorld(t)
	vencrypt := func(tlsCfg *tls.Config, verifyHostname bool) *Config {
		return &Config{AuthSchemes: []string{"vencrypt"}, TLS: tlsCfg, VerifyHostname: verifyHostname}
	}
	requireCert := &rfb.VeNCrypt{TLS: w.serverTLS, RequireClientCert: true}
	for _, tc := range []struct {
		name    string
		cfg     *Config
		host    string
		server  func(net.Conn) error
		version string
	}{
		{"client certificate, host name checked", vencrypt(w.proxyTLS, true), "127.0.0.1", vencryptServer(requireCert), version38},
		{"3.7 client", vencrypt(w.proxyTLS, true), "127.0.0.1", vencryptServer(requireCert), "RFB 003.007\n"},
		{"3.3 client", vencrypt(w.proxyTLS, true), "127.0.0.1", vencryptServer(requireCert), "RFB 003.003\n"},
		{"host name not checked (Nova's way)", vencrypt(w.proxyTLS, false), "vnc.example", vencryptServer(requireCert), version38},
		{"no client certificate when none is required", vencrypt(&tls.Config{RootCAs: w.ca.Pool()}, true), "127.0.0.1",
			vencryptServer(&rfb.VeNCrypt{TLS: w.serverTLS}), version38},
		{"vencrypt,none against a VeNCrypt server", &Config{AuthSchemes: []string{"vencrypt", "none"}, TLS: w.proxyTLS},
			"127.0.0.1", vencryptServer(requireCert), version38},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var saw clientSaw
			o := handshakeWith(t, context.Background(), tc.cfg, tc.host, tc.server, rfbClient(tc.version, typeNone, &saw))
			if o.err != nil {
				t.Fatal(o.err)
			}
			o.expectNext(t)
			if o.res.SecurityType != typeVeNCrypt || o.res.SubType != subX509None {
				t.Errorf("result: got %+v, want VeNCrypt X509None", o.res)
			}
			if _, ok := o.vnc.(*tls.Conn); !ok {
				t.Errorf("got a %T to relay with, want the *tls.Conn", o.vnc)
			}
		})
	}
}

func unknownAuthority(err error) bool {
	var e x509.UnknownAuthorityError
	return errors.As(err, &e)
}

func TestVeNCryptRefusals(t *testing.T) {
	w := newVeNCryptWorld(t)
	cfg := func(tlsCfg *tls.Config, verifyHostname bool) *Config {
		return &Config{AuthSchemes: []string{"vencrypt"}, TLS: tlsCfg, VerifyHostname: verifyHostname}
	}
	requireCert := &rfb.VeNCrypt{TLS: w.serverTLS, RequireClientCert: true}
	// A Go TLS server that verifies client certificates in the handshake:
	// TLS 1.3 delivers its alert on the proxy's first read.
	goVerifying := w.serverTLS.Clone()
	goVerifying.ClientAuth = tls.RequireAndVerifyClientCert
	// A scripted VeNCrypt server up to the subtypes: version, ack, list.
	vencryptScript := func(version []byte, rest func(c net.Conn) error) func(net.Conn) error {
		return rfbServer([]byte{typeVeNCrypt}, func(c net.Conn, chosen byte) error {
			if chosen != typeVeNCrypt {
				return fmt.Errorf("server: proxy chose %d", chosen)
			}
			if _, err := c.Write(version); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
				return err
			}
			return rest(c)
		})
	}
	subtypes := func(ts ...uint32) func(net.Conn) error {
		return func(c net.Conn) error {
			msg := []byte{0, byte(len(ts))}
			for _, st := range ts {
				msg = binary.BigEndian.AppendUint32(msg, st)
			}
			c.Write(msg)
			io.Copy(io.Discard, c)
			return nil
		}
	}
	for _, tc := range []struct {
		name   string
		cfg    *Config
		host   string
		server func(net.Conn) error
		cause  string
		holds  func(error) bool // what the cause must hold, if anything
		reason string           // the client's; refusedReason when empty
	}{
		{name: "wrong CA on the proxy", cfg: cfg(&tls.Config{Certificates: []tls.Certificate{w.client}, RootCAs: w.foreignPool}, false),
			server: vencryptServer(requireCert), cause: "TLS handshake with the VNC server", holds: unknownAuthority},
		{name: "wrong CA on the proxy, host name checked", cfg: cfg(&tls.Config{Certificates: []tls.Certificate{w.client}, RootCAs: w.foreignPool}, true),
			server: vencryptServer(requireCert), cause: "TLS handshake with the VNC server", holds: unknownAuthority},
		{name: "host name mismatch", cfg: cfg(w.proxyTLS, true), host: "vnc.example",
			server: vencryptServer(requireCert), cause: "TLS handshake", holds: func(err error) bool {
				var e x509.HostnameError
				return errors.As(err, &e)
			}},
		{name: "no client certificate (QEMU's silent close)", cfg: cfg(&tls.Config{RootCAs: w.ca.Pool()}, true),
			server: vencryptServer(requireCert), cause: closedAfterTLS},
		{name: "client certificate of another CA (QEMU's silent close)",
			cfg:    cfg(&tls.Config{Certificates: []tls.Certificate{w.foreign}, RootCAs: w.ca.Pool()}, true),
			server: vencryptServer(requireCert), cause: closedAfterTLS},
		{name: "no client certificate, server sends an alert", cfg: cfg(&tls.Config{RootCAs: w.ca.Pool()}, true),
			server: vencryptServer(&rfb.VeNCrypt{TLS: goVerifying}), cause: "ended the TLS session after the handshake"},
		{name: "subtypes without X509None", cfg: cfg(w.proxyTLS, true),
			server: vencryptScript([]byte{0, 2}, subtypes(256, 257, 261)),
			cause:  "offers VeNCrypt subtypes [256 (Plain), 257 (TLSNone), 261 (X509Vnc)]; the proxy accepts only X509None (260)"},
		{name: "no subtypes", cfg: cfg(w.proxyTLS, true), server: vencryptScript([]byte{0, 2}, subtypes()),
			cause: "offers no VeNCrypt subtype"},
		{name: "VeNCrypt 0.1", cfg: cfg(w.proxyTLS, true), server: vencryptScript([]byte{0, 1}, subtypes(260)),
			cause: "speaks VeNCrypt 0.1; the proxy needs 0.2"},
		{name: "version 0.2 refused", cfg: cfg(w.proxyTLS, true), server: vencryptScript([]byte{0, 2}, raw([]byte{0xff})),
			cause: "refused VeNCrypt version 0.2"},
		{name: "X509None refused", cfg: cfg(w.proxyTLS, true),
			server: vencryptScript([]byte{0, 2}, func(c net.Conn) error {
				c.Write([]byte{0, 1, 0, 0, 1, 4})
				io.ReadFull(c, make([]byte, 4))
				return raw([]byte{0})(c)
			}),
			cause: "refused VeNCrypt subtype X509None"},
		{name: "SecurityResult failed inside TLS", cfg: cfg(w.proxyTLS, true),
			server: vencryptScript([]byte{0, 2}, func(c net.Conn) error {
				c.Write([]byte{0, 1, 0, 0, 1, 4})
				io.ReadFull(c, make([]byte, 4))
				c.Write([]byte{1})
				tc := tls.Server(c, w.serverTLS)
				if err := tc.Handshake(); err != nil {
					return err
				}
				return raw(withReason([]byte{0, 0, 0, 1}, "not today"))(tc)
			}),
			cause: "the VNC server refused the security handshake: \"not today\"", reason: "not today"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := tc.host
			if host == "" {
				host = "127.0.0.1"
			}
			var saw clientSaw
			o := handshakeWith(t, context.Background(), tc.cfg, host, tc.server, rfbClient(version38, typeNone, &saw))
			wantErr(t, o.err, ErrSecurity, tc.cause)
			if tc.holds != nil && !tc.holds(o.err) {
				t.Errorf("got %v, want the x509 error inside", o.err)
			}
			wait(t, "client", o.clientDone)
			reason := tc.reason
			if reason == "" {
				reason = refusedReason
			}
			if !saw.refused || saw.reason != reason {
				t.Errorf("client saw %+v, want the refusal %q", saw, reason)
			}
			if o.res.SecurityType != typeVeNCrypt {
				t.Errorf("result: got %+v, want the type chosen (VeNCrypt) even on failure", o.res)
			}
		})
	}
}

// TestDemoServerThroughHandshake relays a whole session between the test
// client and the demo VM (testkit/rfb) with VeNCrypt and with None, for
// every client version: Handshake, then a plain relay, as the session core
// does.
func TestDemoServerThroughHandshake(t *testing.T) {
	w := newVeNCryptWorld(t)
	for _, tc := range []struct {
		name     string
		vencrypt *rfb.VeNCrypt
		cfg      *Config
	}{
		{"None", nil, noneOnly},
		{"VeNCrypt", &rfb.VeNCrypt{TLS: w.serverTLS, RequireClientCert: true},
			&Config{AuthSchemes: []string{"vencrypt"}, TLS: w.proxyTLS, VerifyHostname: true}},
	} {
		srv := rfb.NewServer(rfb.Options{Width: 80, Height: 60, VeNCrypt: tc.vencrypt})
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		for _, version := range []string{"3.3", "3.7", "3.8"} {
			t.Run(tc.name+"/"+version, func(t *testing.T) {
				session(t, l.Addr().String(), "127.0.0.1", tc.cfg, version, func(t *testing.T, c net.Conn, si rfb.ServerInit) {
					if si.Width != 80 || si.Height != 60 || si.Name != "vncgate demo" {
						t.Errorf("server init: got %+v", si)
					}
					if err := rfb.SendKey(c, 'k', true); err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					if _, err := srv.WaitKey(ctx, 'k'); err != nil {
						t.Errorf("key through the proxy: %v", err)
					}
				})
			})
		}
	}
}

// session dials addr, runs Handshake with a client speaking version and a
// relay, then the test client's handshake, a full update, and check.
func session(t *testing.T, addr, host string, cfg *Config, version string, check func(*testing.T, net.Conn, rfb.ServerInit)) {
	t.Helper()
	server, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	clientEnd, proxyClient := loopback.Pair(t)
	t.Cleanup(func() { server.Close() })
	result := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		vnc, _, err := Handshake(ctx, proxyClient, server, host, cfg)
		result <- err
		if err != nil {
			proxyClient.Close()
			server.Close()
			return
		}
		go func() { io.Copy(vnc, proxyClient); vnc.Close() }()
		io.Copy(proxyClient, vnc)
		proxyClient.Close()
	}()
	clientEnd.SetDeadline(time.Now().Add(20 * time.Second))
	si, err := rfb.HandshakeAs(clientEnd, version)
	if herr := <-result; herr != nil {
		t.Fatalf("Handshake: %v (client: %v)", herr, err)
	}
	if err != nil {
		t.Fatalf("client handshake through the proxy: %v", err)
	}
	if si.Version != version {
		t.Errorf("client spoke %s, want %s", si.Version, version)
	}
	if err := rfb.RequestUpdate(clientEnd, si, false); err != nil {
		t.Fatal(err)
	}
	u, err := rfb.ReadUpdate(clientEnd, si)
	if err != nil || len(u.Rects) == 0 {
		t.Fatalf("update through the proxy: %v (%d rectangles)", err, len(u.Rects))
	}
	if check != nil {
		check(t, clientEnd, si)
	}
}
