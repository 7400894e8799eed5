package bench

// VeNCrypt between the proxies and the VNC server (Nova's [vnc]
// auth_schemes = vencrypt): what it costs in relay throughput (TLS on the
// server side of the relay) and in session setup (the proxy's RFB
// handshake with both sides and a TLS 1.3 handshake with the server), each
// measured beside the plain path in the same run.

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// Path names, as printed.
const (
	pathNoVNCVeNCrypt = "novnc-proxy, VeNCrypt to the server"
	pathXVPVeNCrypt   = "xvp-proxy, VeNCrypt to the server"
	pathNoVNCRFB      = "novnc-proxy, RFB relayed"
	pathXVPRFB        = "xvp-proxy, RFB relayed"
)

// Inventory instances behind VeNCrypt.
const (
	vencryptStreamUUID = "2a4c6e80-1b3d-4f5a-8c7e-9d0f1a2b3c4d"
	vencryptDemoUUID   = "3b5d7f91-2c4e-4a6b-9d8f-0e1a2b3c4d5e"
)

// vencryptKit is a throwaway CA, a VNC server's TLS configuration requiring
// the proxies' client certificate (QEMU's verify-peer=yes), and the proxies'
// flags to speak VeNCrypt with it.
type vencryptKit struct {
	server *rfb.VeNCrypt
	args   []string
}

func newVeNCryptKit(b *testing.B) *vencryptKit {
	b.Helper()
	ca, err := certs.NewCA("vncgate bench VeNCrypt CA", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := ca.Issue(loopback)
	if err != nil {
		b.Fatal(err)
	}
	files, err := ca.WriteFiles(b.TempDir(), "vncgate proxy")
	if err != nil {
		b.Fatal(err)
	}
	return &vencryptKit{
		server: &rfb.VeNCrypt{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool()}, RequireClientCert: true},
		args: []string{"--auth_schemes=vencrypt", "--vencrypt_client_cert=" + files.Cert,
			"--vencrypt_client_key=" + files.Key, "--vencrypt_ca_certs=" + files.CA},
	}
}

// vencryptStreamServer is the stream server behind an RFB handshake with
// VeNCrypt X509None: the commands and bytes flow inside TLS.
func vencryptStreamServer(b *testing.B, k *vencryptKit) net.Listener {
	b.Helper()
	data := streamData()
	l := listen(b)
	serve(b, l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc, _, err := rfb.AcceptSecurity(c, k.server)
		if err != nil {
			return
		}
		var clientInit [1]byte
		if _, err := io.ReadFull(tc, clientInit[:]); err != nil {
			return
		}
		streamConn(tc, data) // sets its own deadline
	})
	return l
}

// rfbNone runs the client's side of RFB 3.8 with security None on c, up to
// and including its ClientInit, as a console client through a proxy that
// speaks VeNCrypt to the server on its behalf.
func rfbNone(c net.Conn) error {
	var b [12]byte
	if _, err := io.ReadFull(c, b[:12]); err != nil {
		return fmt.Errorf("RFB version: %w", err)
	}
	if !bytes.Equal(b[:12], rfbVersion) {
		return fmt.Errorf("RFB version: got %q, want %q", b[:12], rfbVersion)
	}
	if _, err := c.Write(rfbVersion); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[0] != 1 || b[1] != 1 {
		return fmt.Errorf("security types: got % x (%v), want [None]", b[:2], err)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:4]); err != nil || !bytes.Equal(b[:4], []byte{0, 0, 0, 0}) {
		return fmt.Errorf("security result: got % x (%v), want OK", b[:4], err)
	}
	_, err := c.Write([]byte{1}) // ClientInit
	return err
}

// withRFBNone runs rfbNone after p's dial.
func withRFBNone(p relayPath) relayPath {
	dial := p.dial
	p.dial = func(ctx context.Context) (net.Conn, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := rfbNone(c); err != nil {
			c.Close()
			return nil, fmt.Errorf("RFB handshake through the proxy: %w", err)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	return p
}

// addVeNCryptRelayPaths adds the relay paths through both proxies of a
// stack with auth_schemes = vencrypt to the VeNCrypt stream server, to be
// measured in the same interleaved rounds as the plain paths.
func addVeNCryptRelayPaths(b *testing.B, add func(relayPath, string)) {
	k := newVeNCryptKit(b)
	sink := vencryptStreamServer(b, k)
	w := startStackArgs(b, k.args, instance(vencryptStreamUUID, sink))
	wsURL, origin, err := novncTarget(consoleURL(b, w, vencryptStreamUUID, "novnc"))
	if err != nil {
		b.Fatal(err)
	}
	xvpToken, err := devstack.TokenOf(consoleURL(b, w, vencryptStreamUUID, "xvpvnc"))
	if err != nil {
		b.Fatal(err)
	}
	novnc := withRFBNone(wsPath(pathNoVNCVeNCrypt, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}))
	novncPid := w.Proc(devstack.NoVNCProxy).Pid
	novnc.cpu = func() time.Duration { return procCPU(novncPid, false) }
	add(novnc, "")
	xvp := withRFBNone(xvpPath(pathXVPVeNCrypt, w.Addr(w.Ports.XVP), xvpToken))
	xvpPid := w.Proc(devstack.XVPProxy).Pid
	xvp.cpu = func() time.Duration { return procCPU(xvpPid, false) }
	add(xvp, "")
}

// printVeNCrypt compares the VeNCrypt paths with the plain ones.
func (r *relayResult) printVeNCrypt(p func(string, ...any)) {
	for _, pair := range [][2]string{{pathNoVNCVeNCrypt, pathNoVNC}, {pathXVPVeNCrypt, pathXVP}} {
		v, plain := r.find(pair[0]), r.find(pair[1])
		if v == nil || plain == nil {
			continue
		}
		p("   %s / plain: %.2fx server->client, %.2fx client->server (TLS 1.3 between proxy and VNC server).\n", pair[0],
			pairedRatio(v.rounds[down], plain.rounds[down]), pairedRatio(v.rounds[up], plain.rounds[up]))
	}
}

// benchVeNCryptSetup measures whole RFB handshakes, connect to ServerInit,
// to the demo RFB server: plain (the proxies relay RFB untouched) and with
// auth_schemes = vencrypt (the proxies run the handshake with both sides,
// VeNCrypt and TLS 1.3 with the server), interleaved.
func benchVeNCryptSetup(b *testing.B) *setupResult {
	k := newVeNCryptKit(b)
	plain := startStack(b)
	demo := rfb.NewServer(rfb.Options{VeNCrypt: k.server, Width: 800, Height: 600})
	l := listen(b)
	go demo.Serve(l)
	b.Cleanup(func() { demo.Close() })
	secure := startStackArgs(b, k.args, instance(vencryptDemoUUID, l))
	base := startPlainRelay(b, plain.DemoVNC)

	wsOpts := func(w *devstack.World, uuid string) (string, *websocket.DialOptions) {
		wsURL, origin, err := novncTarget(consoleURL(b, w, uuid, "novnc"))
		if err != nil {
			b.Fatal(err)
		}
		return wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}
	}
	xvpToken := func(w *devstack.World, uuid string) string {
		token, err := devstack.TokenOf(consoleURL(b, w, uuid, "xvpvnc"))
		if err != nil {
			b.Fatal(err)
		}
		return token
	}
	handshake := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := rfb.Handshake(c)
		return err
	}
	tcpSession := func(addr, token string) func(ctx context.Context) (time.Duration, error) {
		return func(ctx context.Context) (time.Duration, error) {
			start := time.Now()
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return 0, err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if token != "" {
				if err := xvpConnect(c, token); err != nil {
					return 0, err
				}
			}
			if err := handshake(c); err != nil {
				return 0, err
			}
			return time.Since(start), nil
		}
	}
	wsSession := func(wsURL string, opts *websocket.DialOptions) func(ctx context.Context) (time.Duration, error) {
		return func(ctx context.Context) (time.Duration, error) {
			start := time.Now()
			ws, _, err := websocket.Dial(ctx, wsURL, opts)
			if err != nil {
				return 0, err
			}
			defer ws.CloseNow()
			if err := handshake(websocket.NetConn(ctx, ws, websocket.MessageBinary)); err != nil {
				return 0, err
			}
			return time.Since(start), nil
		}
	}
	plainWS, plainOpts := wsOpts(plain, devstack.DemoUUID)
	secureWS, secureOpts := wsOpts(secure, vencryptDemoUUID)
	paths := []setupPath{
		{name: pathBaseline, session: tcpSession(base, "")},
		{name: pathNoVNCRFB, session: wsSession(plainWS, plainOpts)},
		{name: pathNoVNCVeNCrypt, session: wsSession(secureWS, secureOpts)},
		{name: pathXVPRFB, session: tcpSession(plain.Addr(plain.Ports.XVP), xvpToken(plain, devstack.DemoUUID))},
		{name: pathXVPVeNCrypt, session: tcpSession(secure.Addr(secure.Ports.XVP), xvpToken(secure, vencryptDemoUUID))},
	}

	res := measureSetup(b, paths)
	for _, f := range res.paths {
		unit := map[string]string{pathBaseline: "rfb-base", pathNoVNCRFB: "rfb-novnc", pathNoVNCVeNCrypt: "rfb-novnc-vencrypt",
			pathXVPRFB: "rfb-xvp", pathXVPVeNCrypt: "rfb-xvp-vencrypt"}[f.name]
		b.ReportMetric(float64(f.p50)/1e6, unit+"-p50-ms")
		b.ReportMetric(float64(f.p99)/1e6, unit+"-p99-ms")
	}
	return res
}

// printVeNCryptSetup prints section 2b of the report.
func (r *report) printVeNCryptSetup(p func(string, ...any), table func(func(*tabwriter.Writer))) {
	p("\n2b. Whole RFB handshake (connect to ServerInit) to the demo RFB server, RFB relayed untouched vs auth_schemes=vencrypt\n")
	p("   (the proxy speaks RFB to both sides, VeNCrypt X509None and TLS 1.3 with a client certificate to the server):\n")
	p("   %d sequential sessions per path, interleaved.\n", setupSessions)
	if r.vencryptSetup == nil {
		p("   not measured: the setup-vencrypt sub-benchmark failed (see above) or -bench left it out.\n")
		return
	}
	base := r.vencryptSetup.paths[0]
	plainOf := map[string]string{pathNoVNCVeNCrypt: pathNoVNCRFB, pathXVPVeNCrypt: pathXVPRFB}
	find := func(name string) *setupFigures {
		for i := range r.vencryptSetup.paths {
			if r.vencryptSetup.paths[i].name == name {
				return &r.vencryptSetup.paths[i]
			}
		}
		return nil
	}
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   path\tp50\tp99\tmax\tmean\tp50 vs base\tp99 vs base\tp50 VeNCrypt cost\t")
		for _, f := range r.vencryptSetup.paths {
			cost := ""
			if plain := find(plainOf[f.name]); plain != nil {
				cost = "+" + ms(f.p50-plain.p50)
			}
			fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\t%.1fx\t%.1fx\t%s\t\n", f.name, ms(f.p50), ms(f.p99), ms(f.max), ms(f.mean),
				float64(f.p50)/float64(base.p50), float64(f.p99)/float64(base.p99), cost)
		}
	})
}
