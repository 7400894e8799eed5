package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// The load's rates and bounds, as issue 11 ran it.
const (
	mintEvery    = 20 * time.Millisecond
	sessionEvery = 50 * time.Millisecond
	echoEvery    = 100 * time.Millisecond
	longLivedN   = 20
	// maxInFlight bounds each loop's requests in flight: past it a tick
	// is skipped (and counted), so a hung world cannot pile up goroutines.
	maxInFlight = 400
	// requestTimeout bounds one request: longer is a hang, never a
	// refusal.
	requestTimeout = 15 * time.Second
)

// kind is what a request was.
type kind string

const (
	mintReq    kind = "mint"
	sessionReq kind = "session"
)

// outcome is one request's result.
type outcome struct {
	kind     kind
	start    time.Time
	latency  time.Duration
	ok       bool
	refusal  string // a clear refusal: its status (or close code) and text
	failure  string // anything else: a hang, a reset, a bare close
	token    string // an accepted mint's
	console  string // an accepted mint's console type
	uuid     string // a mint's instance
	detailed string // where: "xvp" or "novnc" for sessions
}

func (o outcome) end() time.Time { return o.start.Add(o.latency) }

// recorder collects outcomes.
type recorder struct {
	mu       sync.Mutex
	outcomes []outcome
	skipped  atomic.Int64 // ticks skipped at maxInFlight
}

func (r *recorder) add(o outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes = append(r.outcomes, o)
}

func (r *recorder) all() []outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.outcomes)
}

// lastFailureEnd is when the latest request that failed (refused or not)
// ended; zero if none did.
func (r *recorder) lastFailureEnd() time.Time {
	var last time.Time
	for _, o := range r.all() {
		if !o.ok && o.end().After(last) {
			last = o.end()
		}
	}
	return last
}

// load runs the mint and session loops until stop, each bounded in count.
type load struct {
	w      *devstack.World
	tokens *pool
	rec    recorder
	stop   chan struct{}
	wg     sync.WaitGroup
}

// pool holds tokens of the demo instance, minted before the fault, that
// new sessions use (tokens are not single-use): a session tests the
// proxies and consoleauth's check, a mint tests the mint.
type pool struct {
	mu     sync.Mutex
	tokens map[string][]string // console type → tokens
	next   int
}

func (p *pool) take(console string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := p.tokens[console]
	p.next++
	return ts[p.next%len(ts)]
}

// extraInstance is a second instance under load (fixture.extra).
type extraInstance struct {
	uuid   string
	tokens *pool
	// opens bounds the consoles of it that the load and verifyTokens open
	// at a time (0: no bound of its own): see qemuOpens.
	opens int
}

// startLoad starts both loops; each ends at stop or after maxTicks. With
// extra, every other mint and session is of the extra instance.
func startLoad(w *devstack.World, tokens *pool, extra *extraInstance, maxTicks int) *load {
	l := &load{w: w, tokens: tokens, stop: make(chan struct{})}
	l.loop(mintEvery, maxTicks, func(i int) outcome {
		console := []string{"novnc", "xvpvnc"}[i%2]
		if extra != nil && i/2%2 == 1 {
			return mint(w, extra.uuid, console)
		}
		return mint(w, devstack.DemoUUID, console)
	})
	var extraOpens chan struct{} // nil: no bound
	if extra != nil && extra.opens > 0 {
		extraOpens = make(chan struct{}, extra.opens)
	}
	l.loop(sessionEvery, maxTicks, func(i int) outcome {
		p := l.tokens
		if extra != nil && i/2%2 == 1 {
			p = extra.tokens
			if extraOpens != nil {
				extraOpens <- struct{}{}
				defer func() { <-extraOpens }()
			}
		}
		if i%2 == 0 {
			return xvpSession(w, p.take("xvpvnc"))
		}
		return novncSession(w, p.take("novnc"))
	})
	return l
}

// loop calls do every period in a goroutine of its own (a slow answer
// must not slow the rate down) until stop or max calls.
func (l *load) loop(period time.Duration, max int, do func(int) outcome) {
	l.wg.Go(func() {
		var inFlight atomic.Int64
		var calls sync.WaitGroup
		defer calls.Wait()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for i := range max {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			if inFlight.Load() >= maxInFlight {
				l.rec.skipped.Add(1)
				continue
			}
			inFlight.Add(1)
			calls.Go(func() {
				defer inFlight.Add(-1)
				l.rec.add(do(i))
			})
		}
	})
}

// end stops the loops and waits for every request in flight.
func (l *load) end() []outcome {
	close(l.stop)
	l.wg.Wait()
	return l.rec.all()
}

// mint asks the REST API, through HAProxy, for a console URL.
func mint(w *devstack.World, uuid, console string) outcome {
	o := outcome{kind: mintReq, start: time.Now(), console: console, uuid: uuid}
	defer func() { o.latency = time.Since(o.start) }()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	body := fmt.Sprintf(`{"remote_console": {"protocol": "vnc", "type": %q}}`, console)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, w.RESTURL()+"/v2.1/servers/"+url.PathEscape(uuid)+"/remote-consoles", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.RESTClient().Do(req)
	if err != nil {
		o.failure = "mint: " + err.Error()
		return finish(o)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch resp.StatusCode {
	case http.StatusOK:
		u, err := consoleURL(raw)
		if err == nil {
			o.token, err = devstack.TokenOf(u)
		}
		if err != nil {
			o.failure = fmt.Sprintf("mint: 200 without a token: %v", err)
		} else {
			o.ok = true
		}
	default:
		o = classify(o, resp.StatusCode, string(raw))
	}
	return finish(o)
}

// finish sets the latency (for the defer-less paths).
func finish(o outcome) outcome {
	o.latency = time.Since(o.start)
	return o
}

// conditions are words a clear refusal's text uses to name why: the
// service is unavailable, a host is down or unreachable, a proxy shuts
// down, a cap is reached, an instance moved.
var conditions = []string{"unavailable", " down", "unreachable", "too many", "moved"}

// namesCondition reports whether a refusal's text names its condition.
func namesCondition(text string) bool {
	text = strings.ToLower(text)
	return slices.ContainsFunc(conditions, func(c string) bool { return strings.Contains(text, c) })
}

// classify files an HTTP answer other than success: a clear refusal is a
// 503 or 409 whose body names the condition; anything else is a failure.
func classify(o outcome, code int, body string) outcome {
	text := strings.TrimSpace(body)
	if (code == http.StatusServiceUnavailable || code == http.StatusConflict) && namesCondition(text) {
		o.refusal = fmt.Sprintf("%d %s", code, clip(text))
	} else {
		o.failure = fmt.Sprintf("%s %d %s", o.kind, code, clip(text))
	}
	return o
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// consoleURL is the URL of a remote-consoles answer.
func consoleURL(raw []byte) (string, error) {
	var out struct {
		RemoteConsole struct {
			URL string `json:"url"`
		} `json:"remote_console"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || out.RemoteConsole.URL == "" {
		return "", fmt.Errorf("unexpected answer %s", clip(string(raw)))
	}
	return out.RemoteConsole.URL, nil
}

// xvpOK is xvp-proxy's whole answer before RFB starts.
const xvpOK = "HTTP/1.1 200 OK\r\n\r\n"

// dialXVP opens an xvp console at addr (HAProxy's, or a replica's after
// a PROXY header in preamble) as Nova's Java viewer does; on a refusal it
// returns the outcome.
func dialXVP(addr, preamble, token string) (net.Conn, *outcome) {
	o := outcome{kind: sessionReq, start: time.Now(), detailed: "xvp"}
	c, err := net.DialTimeout("tcp", addr, requestTimeout)
	if err != nil {
		o.failure = "xvp dial: " + err.Error()
		o = finish(o)
		return nil, &o
	}
	c.SetDeadline(time.Now().Add(requestTimeout))
	fmt.Fprintf(c, "%sCONNECT /console?token=%s HTTP/1.1\r\nHost: %s\r\n\r\n", preamble, url.QueryEscape(token), addr)
	br := bufio.NewReader(c)
	head := make([]byte, len(xvpOK))
	n, err := io.ReadFull(br, head)
	if err != nil || string(head) != xvpOK {
		rest, _ := io.ReadAll(io.LimitReader(br, 4<<10))
		c.Close()
		answer := string(head[:n]) + string(rest)
		code := 0
		fmt.Sscanf(answer, "HTTP/1.1 %d", &code)
		if code == 0 {
			o.failure = fmt.Sprintf("xvp: answer %q (%v)", clip(answer), err)
		} else {
			_, body, _ := strings.Cut(answer, "\r\n\r\n")
			o = classify(o, code, body)
		}
		o = finish(o)
		return nil, &o
	}
	c.SetDeadline(time.Time{})
	return &bufConn{Conn: c, r: br}, nil
}

// bufConn reads through the reader that parsed the xvp answer.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// xvpSession opens an xvp console through HAProxy, runs the RFB handshake
// and one small update, and closes it.
func xvpSession(w *devstack.World, token string) outcome {
	start := time.Now()
	c, refused := dialXVP(w.Addr(w.Ports.XVP), "", token)
	if refused != nil {
		return *refused
	}
	defer c.Close()
	o := outcome{kind: sessionReq, start: start, detailed: "xvp"}
	if err := view(c); err != nil {
		o.failure = "xvp: " + err.Error()
	} else {
		o.ok = true
	}
	return finish(o)
}

// novncConn is a novnc console: the WebSocket (for close codes) and its
// byte stream. (dialNoVNC: through HAProxy at addr = HAProxy's, or at a
// replica's.)
type novncConn struct {
	ws *websocket.Conn
	net.Conn
}

// dialNoVNC opens a novnc console's WebSocket through HAProxy as the
// console page does; on a refusal before the upgrade it returns the
// outcome.
func dialNoVNC(w *devstack.World, addr, token string) (*novncConn, *outcome) {
	o := outcome{kind: sessionReq, start: time.Now(), detailed: "novnc"}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	front := w.Addr(w.Ports.NoVNC) // the page's origin, whatever addr
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/websockify?token="+url.QueryEscape(token),
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://" + front}}})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body := ""
			if resp.Body != nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
				body = string(b)
			}
			o = classify(o, resp.StatusCode, body)
		} else {
			o.failure = "novnc dial: " + err.Error()
		}
		o = finish(o)
		return nil, &o
	}
	c.SetReadLimit(64 << 20)
	return &novncConn{ws: c, Conn: websocket.NetConn(context.Background(), c, websocket.MessageBinary)}, nil
}

// closeRefusal files a WebSocket's end: the proxy's clear refusals are
// 4503 (unavailable) and 4409 (moved), with a reason.
func closeRefusal(o outcome, err error) outcome {
	var ce websocket.CloseError
	if errors.As(err, &ce) && (ce.Code == 4503 || ce.Code == 4409) && namesCondition(ce.Reason) {
		o.refusal = fmt.Sprintf("%d %s", ce.Code, clip(ce.Reason))
	} else {
		o.failure = "novnc: " + err.Error()
	}
	return o
}

// novncSession opens a novnc console through HAProxy, runs the RFB
// handshake and one small update, and closes it.
func novncSession(w *devstack.World, token string) outcome {
	start := time.Now()
	c, refused := dialNoVNC(w, w.Addr(w.Ports.NoVNC), token)
	if refused != nil {
		return *refused
	}
	defer c.ws.CloseNow()
	o := outcome{kind: sessionReq, start: start, detailed: "novnc"}
	if err := view(c); err != nil {
		o = closeRefusal(o, err)
	} else {
		o.ok = true
		c.ws.Close(websocket.StatusNormalClosure, "")
	}
	return finish(o)
}

// view runs the RFB handshake and reads one update of a small corner,
// within requestTimeout.
func view(c net.Conn) error {
	c.SetDeadline(time.Now().Add(requestTimeout))
	defer c.SetDeadline(time.Time{})
	si, err := rfb.Handshake(c)
	if err != nil {
		return fmt.Errorf("rfb handshake: %w", err)
	}
	return echo(c, si)
}

// echo asks for a 16×16 corner (not the whole screen: 20 consoles at 10
// updates a second must not load the machine) and reads the update.
func echo(c net.Conn, si rfb.ServerInit) error {
	corner := si
	corner.Width, corner.Height = 16, 16
	if err := rfb.RequestUpdate(c, corner, false); err != nil {
		return err
	}
	u, err := rfb.ReadUpdate(c, si)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if len(u.Rects) == 0 {
		return errors.New("update without rectangles")
	}
	return nil
}
