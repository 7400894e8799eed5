package chaos

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/testkit/rfb"
)

// maxEchoes bounds one long-lived console's echoes (10 a second: well over
// the suite's length).
const maxEchoes = 20000

// sessionEnd is one end of a long-lived console.
type sessionEnd struct {
	at    time.Time
	cause string
	code  websocket.StatusCode // the WebSocket's close code; -1 for xvp
	// reconnected: the client opened its console again through HAProxy
	// with the same token, as the console page does after a 1012.
	reconnected bool
	reconnect   string // why not
}

// longLived is a console kept open, echoing every 100 ms; when it ends it
// reconnects through HAProxy with the same token and records the end.
type longLived struct {
	name  string
	novnc bool
	token string
	w     *devstack.World

	mu     sync.Mutex
	ends   []sessionEnd
	echoes int
}

// endsBetween are the ends recorded in [from, to].
func (l *longLived) endsBetween(from, to time.Time) []sessionEnd {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []sessionEnd
	for _, e := range l.ends {
		if !e.at.Before(from) && !e.at.After(to) {
			out = append(out, e)
		}
	}
	return out
}

// open connects; its error says why not.
func (l *longLived) open() (net.Conn, rfb.ServerInit, error) {
	var c net.Conn
	if l.novnc {
		nc, refused := dialNoVNC(l.w, l.w.Addr(l.w.Ports.NoVNC), l.token)
		if refused != nil {
			return nil, rfb.ServerInit{}, errors.New(refused.refusal + refused.failure)
		}
		c = nc
	} else {
		xc, refused := dialXVP(l.w.Addr(l.w.Ports.XVP), "", l.token)
		if refused != nil {
			return nil, rfb.ServerInit{}, errors.New(refused.refusal + refused.failure)
		}
		c = xc
	}
	c.SetDeadline(time.Now().Add(requestTimeout))
	si, err := rfb.Handshake(c)
	c.SetDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, si, fmt.Errorf("rfb handshake: %w", err)
	}
	return c, si, nil
}

// run echoes until stop or maxEchoes; c is open already.
func (l *longLived) run(c net.Conn, si rfb.ServerInit, stop <-chan struct{}) {
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	tick := time.NewTicker(echoEvery)
	defer tick.Stop()
	for range maxEchoes {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		c.SetDeadline(time.Now().Add(requestTimeout))
		err := echo(c, si)
		c.SetDeadline(time.Time{})
		if err == nil {
			l.mu.Lock()
			l.echoes++
			l.mu.Unlock()
			continue
		}
		end := sessionEnd{at: time.Now(), cause: err.Error(), code: -1}
		if l.novnc {
			end.code = websocket.CloseStatus(err)
		}
		c.Close()
		c = nil
		// As the console page: five tries over a few seconds.
		for try := range 5 {
			var rerr error
			if c, si, rerr = l.open(); rerr == nil {
				end.reconnected = true
				break
			}
			end.reconnect = rerr.Error()
			select {
			case <-stop:
				l.record(end)
				return
			case <-time.After(time.Duration(200*(try+1)) * time.Millisecond):
			}
		}
		l.record(end)
		if c == nil {
			return // lost for good: its ends say so
		}
	}
}

func (l *longLived) record(e sessionEnd) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ends = append(l.ends, e)
}

// startLongLived opens n consoles through HAProxy, half novnc, half xvp,
// each on a token of tokens, echoing until stop.
func startLongLived(w *devstack.World, tokens *pool, n int, stop <-chan struct{}, wg *sync.WaitGroup) ([]*longLived, error) {
	var out []*longLived
	for i := range n {
		l := &longLived{name: fmt.Sprintf("long-%02d", i), novnc: i%2 == 0, w: w}
		if l.novnc {
			l.token = tokens.take("novnc")
		} else {
			l.token = tokens.take("xvpvnc")
		}
		c, si, err := l.open()
		if err != nil {
			return out, fmt.Errorf("%s: %w", l.name, err)
		}
		wg.Go(func() { l.run(c, si, stop) })
		out = append(out, l)
	}
	return out, nil
}
