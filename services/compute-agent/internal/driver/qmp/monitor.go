package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/backoff"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// monitor owns the QMP session of one instance.
type monitor struct {
	d    *Driver
	uuid string
	path string
	log  *slog.Logger

	dialing chan struct{} // one slot: one connection attempt at a time
	kick    chan struct{} // wakes run when get has connected

	mu   sync.Mutex
	conn *conn // nil when not connected

	stateMu   sync.Mutex // guards what follows; held while publishing, to keep order
	up        bool       // QEMU shows a guest (its console is live)
	lastPort  int32      // last VNC port seen, kept while QEMU is down
	baselined bool       // the first attempt is over
}

// current returns the live session, or nil.
func (m *monitor) current() *conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != nil && !m.conn.alive() {
		m.conn = nil
	}
	return m.conn
}

// get returns the live session, connecting now when there is none (so a
// console request right after QEMU starts does not wait for the monitor's
// backoff). Errors are driver sentinels.
func (m *monitor) get(ctx context.Context) (*conn, error) {
	if c := m.current(); c != nil {
		return c, nil
	}
	select {
	case m.dialing <- struct{}{}:
		defer func() { <-m.dialing }()
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for qmp connection: %w", driver.ErrUnavailable, ctx.Err())
	}
	if c := m.current(); c != nil {
		return c, nil
	}
	if m.d.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: driver closed", driver.ErrUnavailable)
	}
	c, err := dial(ctx, m.path, m.d.cfg.DialTimeout)
	if err != nil {
		return nil, dialError(m.path, err)
	}
	m.mu.Lock()
	m.conn = c
	m.mu.Unlock()
	if m.d.ctx.Err() != nil { // closed meanwhile: run will not reap it
		c.close()
		return nil, fmt.Errorf("%w: driver closed", driver.ErrUnavailable)
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
	return c, nil
}

// run keeps a session open and turns what happens to QEMU into events:
//
//   - the session ending (QEMU exited: socket EOF), SHUTDOWN (guest powered
//     off, or QEMU told to quit): driver.Stopped;
//   - GUEST_PANICKED: driver.Stopped ("the instance crashed");
//   - MIGRATION with status "completed": driver.MigratedAway;
//   - a session opening on a running QEMU after one of those, or RESUME
//     after SHUTDOWN: driver.Started, plus driver.ConsoleChanged when the
//     VNC port differs from the last one seen (by run or by Console).
//
// STOP (pause) is not reported: a paused guest keeps its console. The first
// attempt only sets the baseline (no Started): the agent publishes
// Instances at start.
func (m *monitor) run(ctx context.Context) {
	bo := backoff.Backoff{Min: m.d.cfg.MinBackoff, Max: m.d.cfg.MaxBackoff}
	for ctx.Err() == nil {
		c, err := m.get(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			m.setBaseline()
			wait := bo.Next()
			m.log.Debug("qmp monitor unreachable", "error", err, "retry_in", wait.Round(time.Millisecond))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
			case <-t.C:
			case <-m.kick:
			}
			t.Stop()
			continue
		}
		bo.Reset()
		m.log.Info("qmp session open")
		if m.status(ctx, c) {
			m.sawRunning(m.port(ctx, c), driver.ReasonStarted)
		} else {
			m.sawStopped(driver.Stopped, driver.ReasonStopped)
		}
		m.setBaseline()
		m.session(ctx, c)
		c.close()
		<-c.done
		if ctx.Err() != nil {
			break // Close: QEMU still runs, report nothing
		}
		m.sawStopped(driver.Stopped, driver.ReasonStopped)
		m.log.Info("qmp session closed", "error", c.err)
	}
	if c := m.current(); c != nil {
		c.close()
	}
}

// sawRunning records that QEMU shows a guest whose VNC server listens on
// port (0: unknown or none).
func (m *monitor) sawRunning(port int32, reason string) {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if !m.up && m.baselined {
		m.emit(driver.Started, reason)
	}
	if m.lastPort > 0 && port > 0 && port != m.lastPort {
		m.emit(driver.ConsoleChanged, driver.ReasonConsole)
	}
	if port > 0 {
		m.lastPort = port
	}
	m.up = true
}

// sawStopped records that the guest is gone, reporting kind if it was up.
func (m *monitor) sawStopped(kind driver.EventKind, reason string) {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if m.up {
		m.emit(kind, reason)
	}
	m.up = false
}

// setBaseline ends the first attempt: from now on a start is reported.
func (m *monitor) setBaseline() {
	m.stateMu.Lock()
	m.baselined = true
	m.stateMu.Unlock()
}

// session forwards the events of c until it ends or ctx does.
func (m *monitor) session(ctx context.Context, c *conn) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			// Deliver what was queued before the end.
			for {
				select {
				case ev := <-c.events:
					m.handle(ctx, c, ev)
				default:
					return
				}
			}
		case ev := <-c.events:
			m.handle(ctx, c, ev)
		}
	}
}

func (m *monitor) handle(ctx context.Context, c *conn, ev message) {
	m.log.Debug("qmp event", "event", ev.Event, "data", string(ev.Data))
	switch ev.Event {
	case "SHUTDOWN":
		m.sawStopped(driver.Stopped, driver.ReasonStopped)
	case "GUEST_PANICKED":
		m.sawStopped(driver.Stopped, driver.ReasonCrashed)
	case "MIGRATION":
		var data struct {
			Status string `json:"status"`
		}
		if json.Unmarshal(ev.Data, &data) == nil && data.Status == "completed" {
			m.sawStopped(driver.MigratedAway, driver.ReasonMigrated)
		}
	case "RESUME":
		if c.alive() {
			m.sawRunning(m.port(ctx, c), driver.ReasonStarted)
		}
	}
}

// status reports whether QEMU shows a guest now. When it cannot tell, it
// says yes: QEMU ran when it greeted us, and if it died since, the end of
// the session reports it.
func (m *monitor) status(ctx context.Context, c *conn) bool {
	ctx, cancel := context.WithTimeout(ctx, m.d.cfg.CallTimeout)
	defer cancel()
	var st statusInfo
	if err := c.execute(ctx, "query-status", &st); err != nil {
		m.log.Warn("query-status", "error", err)
		return true
	}
	return statusHasConsole(st.Status)
}

// port reads the VNC port; 0 when there is none.
func (m *monitor) port(ctx context.Context, c *conn) int32 {
	ctx, cancel := context.WithTimeout(ctx, m.d.cfg.CallTimeout)
	defer cancel()
	var v vncInfo
	if err := c.execute(ctx, "query-vnc", &v); err != nil {
		return 0
	}
	p, err := vncPort(v)
	if err != nil {
		return 0
	}
	return p
}

func (m *monitor) emit(kind driver.EventKind, reason string) {
	m.log.Info("instance lifecycle", "kind", kind.String(), "reason", reason)
	m.d.fan.publish(driver.Event{UUID: m.uuid, Kind: kind, Reason: reason})
}
