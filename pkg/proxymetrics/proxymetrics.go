// Package proxymetrics is the one set of Prometheus metrics both console
// proxies (novnc-proxy, xvp-proxy) export, so that one dashboard and one set
// of alerts serve both:
//
//	vncgate_proxy_sessions_active                 gauge: sessions being relayed now
//	vncgate_proxy_sessions_total{result}          counter: session attempts, "relayed" or why refused
//	vncgate_proxy_session_ended_total{reason}     counter: relayed sessions that ended, by why
//	vncgate_proxy_bytes_total{direction}          counter: bytes relayed, client_to_server or server_to_client, counted live
//	vncgate_proxy_session_setup_seconds           histogram: accept (or upgrade request) to relay start
//	vncgate_proxy_session_duration_seconds        histogram: relay start to session end
//	vncgate_proxy_connections_open                gauge: accepted connections open now (pkg/edge)
//	vncgate_proxy_connections_refused_total{reason} counter: connections refused by a cap
//	vncgate_proxy_accept_errors_total             counter: failed accepts (out of file descriptors, say)
//	vncgate_proxy_token_checks_throttled_total    counter: token checks delayed by the failed-token limit
//
// It promises bounded label cardinality: label values come only from this
// package's Refusal and EndReason constants and the two directions, never a
// token, an address or an instance; every value is exported from the start
// (at zero), so rates and alerts work before the first event. Metrics are
// registered with the Registerer the proxy passes in (its own registry, never
// the global default one). Bytes are counted as the relay writes them
// (Session.Count), so a long session's traffic shows while it runs, not in
// one step at its end.
package proxymetrics

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vncgate/vncgate/pkg/relay"
)

// Refusal is why a proxy refused a session attempt: the result label of
// vncgate_proxy_sessions_total other than "relayed". The zero value is not a
// refusal and is not counted.
type Refusal int

// The refusals, the ways the proxies already tell failures apart.
const (
	// RefusedBadRequest: a malformed upgrade or XVP head, no token, a
	// method or subprotocol the proxy does not speak.
	RefusedBadRequest Refusal = iota + 1
	// RefusedHandshakeTimeout: no complete request within the handshake
	// timeout (xvp-proxy's 408).
	RefusedHandshakeTimeout
	// RefusedClientGone: the client went away before the session started
	// (a port probe, a connection cut mid-request or before the answer).
	RefusedClientGone
	// RefusedOriginRefused: the WebSocket's Origin is not one of ours.
	RefusedOriginRefused
	// RefusedTokenInvalid: the token is unknown, expired or revoked.
	RefusedTokenInvalid
	// RefusedWrongType: the token was minted for the other console type.
	RefusedWrongType
	// RefusedConsoleMoved: the instance no longer listens where the token says.
	RefusedConsoleMoved
	// RefusedUnavailable: consoleauth could not answer.
	RefusedUnavailable
	// RefusedTooManySessions: the instance has its maximum of sessions.
	RefusedTooManySessions
	// RefusedVNCUnreachable: the VNC server could not be reached.
	RefusedVNCUnreachable
	// RefusedRevoked: the instance's tokens were revoked during the handshake.
	RefusedRevoked
	// RefusedShutdown: the proxy is draining or shutting down.
	RefusedShutdown
	// RefusedVNCSecurity: no RFB security type both the proxy and the VNC
	// server accept, or VeNCrypt with the server failed (auth_schemes).
	RefusedVNCSecurity
	// RefusedNotVNC: what the VNC server's address answered is not RFB.
	RefusedNotVNC

	numRefusals // one past the last; the refusal arrays' length
)

var refusalNames = [numRefusals]string{
	RefusedBadRequest:       "bad_request",
	RefusedHandshakeTimeout: "handshake_timeout",
	RefusedClientGone:       "client_gone",
	RefusedOriginRefused:    "origin_refused",
	RefusedTokenInvalid:     "token_invalid",
	RefusedWrongType:        "wrong_type",
	RefusedConsoleMoved:     "console_moved",
	RefusedUnavailable:      "unavailable",
	RefusedTooManySessions:  "too_many_sessions",
	RefusedVNCUnreachable:   "vnc_unreachable",
	RefusedRevoked:          "revoked",
	RefusedShutdown:         "shutdown",
	RefusedVNCSecurity:      "vnc_security",
	RefusedNotVNC:           "not_vnc",
}

// String is the refusal's label value.
func (r Refusal) String() string {
	if r <= 0 || r >= numRefusals {
		return "invalid"
	}
	return refusalNames[r]
}

// resultRelayed is the result label of a session that started.
const resultRelayed = "relayed"

// EndReason is why a relayed session ended: the reason label of
// vncgate_proxy_session_ended_total. The zero value is not a reason and is
// not counted.
type EndReason int

// The end reasons.
const (
	// EndClientClosed: the client closed or lost its side first.
	EndClientClosed EndReason = iota + 1
	// EndServerClosed: the VNC server closed or lost its side first.
	EndServerClosed
	// EndRevoked: the instance's tokens were revoked, or an operator ended it.
	EndRevoked
	// EndIdleTimeout: no byte moved either way for the idle timeout.
	EndIdleTimeout
	// EndMaxLength: the session reached its maximum length.
	EndMaxLength
	// EndTokenExpired: the session's token expired (novnc-proxy's
	// enforce_session_timeout).
	EndTokenExpired
	// EndPingTimeout: the client did not answer a WebSocket ping.
	EndPingTimeout
	// EndProtocolError: the client broke the protocol (a WebSocket text frame).
	EndProtocolError
	// EndShutdown: the proxy ended the session when it shut down.
	EndShutdown

	numEndReasons // one past the last; the reason arrays' length
)

var endReasonNames = [numEndReasons]string{
	EndClientClosed:  "client_closed",
	EndServerClosed:  "server_closed",
	EndRevoked:       "revoked",
	EndIdleTimeout:   "idle_timeout",
	EndMaxLength:     "max_length",
	EndTokenExpired:  "token_expired",
	EndPingTimeout:   "ping_timeout",
	EndProtocolError: "protocol_error",
	EndShutdown:      "shutdown",
}

// String is the reason's label value.
func (r EndReason) String() string {
	if r <= 0 || r >= numEndReasons {
		return "invalid"
	}
	return endReasonNames[r]
}

// CapRefusal is why a listener refused a connection before any request:
// the reason label of vncgate_proxy_connections_refused_total.
type CapRefusal int

// The connection caps (pkg/edge).
const (
	// CapMaxConnections: the proxy had max_connections open.
	CapMaxConnections CapRefusal = iota
	// CapPerClient: the client's address had max_connections_per_client open.
	CapPerClient

	numCapRefusals
)

var capRefusalNames = [numCapRefusals]string{
	CapMaxConnections: "max_connections",
	CapPerClient:      "max_connections_per_client",
}

// String is the cap's label value.
func (c CapRefusal) String() string {
	if c < 0 || c >= numCapRefusals {
		return "invalid"
	}
	return capRefusalNames[c]
}

// Histogram buckets, in seconds. Setup spans loopback (sub-millisecond; the
// target is p99 ≤ 5 ms) to the 10 s handshake timeout; duration spans a
// refused-at-once session to a day.
var (
	setupBuckets    = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	durationBuckets = []float64{.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400}
)

// Metrics is a proxy's metrics; safe for concurrent use. Create it with New.
type Metrics struct {
	active   prometheus.Gauge
	sessions *prometheus.CounterVec
	ended    *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	setup    prometheus.Histogram
	duration prometheus.Histogram

	connsOpen    prometheus.Gauge
	connsRefused *prometheus.CounterVec
	acceptErrors prometheus.Counter
	throttled    prometheus.Counter
	silent       prometheus.Counter

	// Children resolved once, so counting takes no label lookup.
	relayed              prometheus.Counter
	refused              [numRefusals]prometheus.Counter
	endedBy              [numEndReasons]prometheus.Counter
	toServer, fromServer prometheus.Counter
	capRefused           [numCapRefusals]prometheus.Counter
}

// New creates the metrics and registers them with reg (a proxy's own
// registry). With a nil reg they count but are not exported, which is what
// tests that do not look at metrics want. It panics if reg already holds
// them, as prometheus.Registerer.MustRegister does.
func New(reg prometheus.Registerer) *Metrics {
	const ns, sub = "vncgate", "proxy"
	m := &Metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sessions_active",
			Help: "Console sessions being relayed now.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sessions_total",
			Help: `Console session attempts, by result: "relayed", or why the proxy refused it.`,
		}, []string{"result"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "session_ended_total",
			Help: "Relayed console sessions that ended, by reason.",
		}, []string{"reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "bytes_total",
			Help: "Bytes relayed, counted as they move (live sessions included), by direction (client_to_server, server_to_client).",
		}, []string{"direction"}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "session_setup_seconds",
			Help:    "Time from accepting a connection (or a WebSocket upgrade request) to the start of the relay: request, token check, dial.",
			Buckets: setupBuckets,
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "session_duration_seconds",
			Help:    "Time from the start of a relay to the end of its session.",
			Buckets: durationBuckets,
		}),
		connsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_open",
			Help: "Accepted client connections open now, sessions and requests not yet upgraded alike.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_refused_total",
			Help: "Client connections refused by a cap before any request, by cap (max_connections, max_connections_per_client).",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "accept_errors_total",
			Help: "Failed accepts on the public port (out of file descriptors, say); the listener backs off and goes on.",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "token_checks_throttled_total",
			Help: "Token checks delayed because their client address and token prefix had too many invalid tokens (checked all the same).",
		}),
		silent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "vnc_silent_connections_total",
			Help: "Connections to VNC servers closed because the server sent nothing within server_greeting_timeout; each but a session's last is dialled again.",
		}),
	}
	m.relayed = m.sessions.WithLabelValues(resultRelayed)
	for r := RefusedBadRequest; r < numRefusals; r++ {
		m.refused[r] = m.sessions.WithLabelValues(r.String())
	}
	for r := EndClientClosed; r < numEndReasons; r++ {
		m.endedBy[r] = m.ended.WithLabelValues(r.String())
	}
	m.toServer = m.bytes.WithLabelValues("client_to_server")
	m.fromServer = m.bytes.WithLabelValues("server_to_client")
	for c := CapMaxConnections; c < numCapRefusals; c++ {
		m.capRefused[c] = m.connsRefused.WithLabelValues(c.String())
	}
	if reg != nil {
		reg.MustRegister(m.active, m.sessions, m.ended, m.bytes, m.setup, m.duration,
			m.connsOpen, m.connsRefused, m.acceptErrors, m.throttled, m.silent)
	}
	return m
}

// Refused counts a session attempt the proxy refused. A value that is not
// one of the Refused constants is not counted.
func (m *Metrics) Refused(r Refusal) {
	if r > 0 && r < numRefusals {
		m.refused[r].Inc()
	}
}

// ConnOpened and ConnClosed count an accepted connection's life.
func (m *Metrics) ConnOpened() { m.connsOpen.Inc() }

// ConnClosed: see ConnOpened.
func (m *Metrics) ConnClosed() { m.connsOpen.Dec() }

// ConnRefused counts a connection refused by cap c.
func (m *Metrics) ConnRefused(c CapRefusal) {
	if c >= 0 && c < numCapRefusals {
		m.capRefused[c].Inc()
	}
}

// AcceptError counts a failed accept.
func (m *Metrics) AcceptError() { m.acceptErrors.Inc() }

// TokenCheckThrottled counts a token check the failed-token limit delayed.
func (m *Metrics) TokenCheckThrottled() { m.throttled.Inc() }

// VNCSilent counts a VNC server connection closed for its silence.
func (m *Metrics) VNCSilent() { m.silent.Inc() }

// Start counts a session whose relay starts now, setup after the proxy
// accepted it, and returns its handle. The caller must call End on it when
// the relay has returned.
func (m *Metrics) Start(setup time.Duration) *Session {
	m.relayed.Inc()
	m.active.Inc()
	m.setup.Observe(setup.Seconds())
	return &Session{m: m, started: time.Now()}
}

// Session is one relayed session's share of the metrics. It is the
// relay's Counter (relay.Relay.Counter), so bytes are counted as they move.
type Session struct {
	m       *Metrics
	started time.Time
	ended   atomic.Bool
	// Bytes counted live, so End adds only what was not.
	toServer, fromServer atomic.Int64
}

// Count counts n bytes read from side from and written to the other side,
// as the relay moves them.
func (s *Session) Count(from relay.Side, n int) {
	if n <= 0 {
		return
	}
	if from == relay.Client {
		s.toServer.Add(int64(n))
		s.m.toServer.Add(float64(n))
	} else {
		s.fromServer.Add(int64(n))
		s.m.fromServer.Add(float64(n))
	}
}

// End counts the session's end, for reason, with the bytes its relay
// moved that Count has not counted yet. Only the first call counts.
func (s *Session) End(reason EndReason, res relay.Result) {
	if !s.ended.CompareAndSwap(false, true) {
		return
	}
	m := s.m
	m.active.Dec()
	m.duration.Observe(time.Since(s.started).Seconds())
	if reason > 0 && reason < numEndReasons {
		m.endedBy[reason].Inc()
	}
	m.toServer.Add(float64(max(res.ClientToServer-s.toServer.Load(), 0)))
	m.fromServer.Add(float64(max(res.ServerToClient-s.fromServer.Load(), 0)))
}

// NewRegistry returns a registry for one proxy, holding the Go runtime and
// process collectors as consoleauth's does; pass it to New and Handler.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves g's metrics in the Prometheus exposition format, for
// GET /metrics.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
