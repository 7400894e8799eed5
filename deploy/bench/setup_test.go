package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
)

// Steps of a session timed alone, as printed.
const (
	partCheckToken = "  step: CheckToken alone (gRPC)"
	partEtcdGet    = "  step: etcd Get alone (token record)"
)

const (
	setupSessions = 1000 // measured sessions per path, one after another (p99: the 10th slowest)
	setupWarmup   = 20   // unmeasured sessions per path first
)

// setupPath opens one session to the demo RFB server, returns once the
// first RFB byte arrived, and closes it.
type setupPath struct {
	name string
	// part marks a step of a session timed alone, not a path.
	part    bool
	session func(ctx context.Context) (time.Duration, error)
}

// setupFigures are one path's session setup latencies.
type setupFigures struct {
	name          string
	part          bool
	p50, p99, max time.Duration
	mean          time.Duration
}

type setupResult struct {
	sessions int
	paths    []setupFigures // baseline first
}

// readVersion reads the RFB version through r and checks it.
func readVersion(r io.Reader) error {
	got := make([]byte, len(rfbVersion))
	if _, err := io.ReadFull(r, got); err != nil {
		return fmt.Errorf("first RFB bytes: %w", err)
	}
	if !bytes.Equal(got, rfbVersion) {
		return fmt.Errorf("first RFB bytes: got %q, want %q", got, rfbVersion)
	}
	return nil
}

// benchSetup measures session setup to the first RFB byte, sequentially,
// through novnc-proxy (upgrade, token check, dial), xvp-proxy (CONNECT,
// token check, dial, 200) and the plain relay (connect, dial).
func benchSetup(b *testing.B) *setupResult {
	w := startStack(b)
	base := startPlainRelay(b, w.DemoVNC)
	// Every session uses a token of its own, minted beforehand, as a
	// console page connects a little after its URL was minted.
	novncURLs := freshTokens(b, w, "novnc")
	_, origin, err := novncTarget(novncURLs.next())
	if err != nil {
		b.Fatal(err)
	}
	novncLeanURLs := freshTokens(b, w, "novnc")
	xvpTokens := freshTokens(b, w, "xvpvnc")
	checkTokens := freshTokens(b, w, "novnc")
	xvpAddr := w.Addr(w.Ports.XVP)
	// CheckToken as a proxy asks it: mTLS, a certificate of role proxy.
	ca := consoleauthv1.NewConsoleAuthServiceClient(grpcAs(b, w, w.Addr(w.Ports.ConsoleAuthGRPC), authn.RoleProxy, "bench-proxy"))
	tokenOf := func(consoleURL string) string {
		token, err := devstack.TokenOf(consoleURL)
		if err != nil {
			b.Fatal(err)
		}
		return token
	}
	tokenKey := registry.TokenKey(registry.TokenHash(tokenOf(checkTokens.next())))

	tcpSession := func(ctx context.Context, addr string, preamble func(net.Conn) error) (time.Duration, error) {
		start := time.Now()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if preamble != nil {
			if err := preamble(c); err != nil {
				return 0, err
			}
		}
		if err := readVersion(c); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	wsOpts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}}
	paths := []setupPath{
		{pathBaseline, false, func(ctx context.Context) (time.Duration, error) {
			return tcpSession(ctx, base, nil)
		}},
		{pathNoVNC, false, func(ctx context.Context) (time.Duration, error) {
			wsURL, _, err := novncTarget(novncURLs.next())
			if err != nil {
				return 0, err
			}
			start := time.Now()
			ws, _, err := websocket.Dial(ctx, wsURL, wsOpts)
			if err != nil {
				return 0, err
			}
			defer ws.CloseNow()
			if err := readVersion(websocket.NetConn(ctx, ws, websocket.MessageBinary)); err != nil {
				return 0, err
			}
			return time.Since(start), nil
		}},
		{pathNoVNCLean, false, func(ctx context.Context) (time.Duration, error) {
			wsURL, _, err := novncTarget(novncLeanURLs.next())
			if err != nil {
				return 0, err
			}
			start := time.Now()
			ws, err := dialLeanWS(ctx, wsURL, origin, "", 4<<10)
			if err != nil {
				return 0, err
			}
			defer ws.Close()
			if err := readVersion(ws); err != nil {
				return 0, err
			}
			return time.Since(start), nil
		}},
		{pathXVP, false, func(ctx context.Context) (time.Duration, error) {
			token := tokenOf(xvpTokens.next())
			return tcpSession(ctx, xvpAddr, func(c net.Conn) error { return xvpConnect(c, token) })
		}},
		{partCheckToken, true, func(ctx context.Context) (time.Duration, error) {
			token := tokenOf(checkTokens.next())
			start := time.Now()
			resp, err := ca.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
			if err != nil {
				return 0, err
			}
			if resp.GetConnectInfo().GetPort() == 0 {
				return 0, fmt.Errorf("CheckToken: no port in %v", resp)
			}
			return time.Since(start), nil
		}},
		{partEtcdGet, true, func(ctx context.Context) (time.Duration, error) {
			start := time.Now()
			resp, err := w.Client.Get(ctx, tokenKey)
			if err != nil {
				return 0, err
			}
			if len(resp.Kvs) != 1 {
				return 0, fmt.Errorf("etcd: token record not found")
			}
			return time.Since(start), nil
		}},
	}

	res := measureSetup(b, paths)
	for _, f := range res.paths {
		unit := map[string]string{pathBaseline: "base", pathNoVNC: "novnc", pathNoVNCLean: "novnc-lean", pathXVP: "xvp",
			partCheckToken: "checktoken", partEtcdGet: "etcdget"}[f.name]
		b.ReportMetric(float64(f.p50)/1e6, unit+"-p50-ms")
		b.ReportMetric(float64(f.p99)/1e6, unit+"-p99-ms")
	}
	return res
}

// tokenList hands out console URLs minted beforehand, one per session.
type tokenList struct {
	urls []string
	i    int
}

// freshTokens mints a console URL for every session of a setup
// measurement (and one spare).
func freshTokens(b *testing.B, w *devstack.World, consoleType string) *tokenList {
	l := &tokenList{}
	for range setupWarmup + setupSessions + 1 {
		l.urls = append(l.urls, consoleURL(b, w, devstack.DemoUUID, consoleType))
	}
	return l
}

func (l *tokenList) next() string {
	u := l.urls[l.i]
	l.i++
	return u
}

// measureSetup times setupSessions sessions of every path (after
// setupWarmup), interleaved so that noise falls on every path alike.
func measureSetup(b *testing.B, paths []setupPath) *setupResult {
	times := make([][]time.Duration, len(paths))
	run := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d, err := paths[i].session(ctx)
		if err != nil {
			b.Fatalf("%s: session: %v", paths[i].name, err)
		}
		times[i] = append(times[i], d)
	}
	for range setupWarmup {
		for i := range paths {
			run(i)
		}
	}
	clear(times)
	for range setupSessions {
		for i := range paths {
			run(i)
		}
	}
	res := &setupResult{sessions: setupSessions}
	for i, p := range paths {
		ds := times[i]
		slices.Sort(ds)
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		res.paths = append(res.paths, setupFigures{name: p.name, part: p.part, p50: percentile(ds, 50), p99: percentile(ds, 99),
			max: ds[len(ds)-1], mean: sum / time.Duration(len(ds))})
	}
	return res
}
