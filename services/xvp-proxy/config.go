package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/edge"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/livesessions"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/pkg/tokencheck"
)

// Config is everything xvp-proxy is told at start. Options are Nova's
// where Nova has them, in Nova's sections; the others are in [vncgate].
type Config struct {
	Host         string // [vnc] xvpvncproxy_host
	Port         int    // [vnc] xvpvncproxy_port
	VNCEnabled   bool   // [vnc] enabled; false refuses to start
	SourceIsIPv6 bool   // [DEFAULT] source_is_ipv6

	// Cert and Key ([DEFAULT] cert and key; key may be inside cert) turn on
	// TLS on the listener; SSLMinimumVersion and SSLCiphers are [console]
	// ssl_minimum_version and ssl_ciphers.
	Cert, Key, SSLMinimumVersion, SSLCiphers string

	// TrustedProxies ([vncgate] trusted_proxies) are the load balancers
	// whose connections begin with a PROXY protocol header.
	TrustedProxies []string
	// AllowPlaintext ([vncgate] allow_plaintext) lets the listener and the
	// links to consoleauth and etcd be plaintext off loopback.
	AllowPlaintext bool
	// MaxConnections and MaxConnectionsPerClient cap open connections on
	// the listener, in all and per client address (0: no cap).
	MaxConnections          int
	MaxConnectionsPerClient int

	ConsoleAuthAddress string
	GRPC               tlsconfig.Files // mTLS to consoleauth

	EtcdEndpoints []string        // empty turns revocation watching off
	Etcd          tlsconfig.Files // TLS to etcd

	// AdminListen ([vncgate] admin_listen) is the host:port of the admin
	// listener (package admin: /livez, /readyz, /metrics, /debug/pprof/,
	// and /healthz, the load balancers' probe, as the XVP port is raw TCP);
	// empty turns it off.
	AdminListen string
	// AdminAllowRemote is [vncgate] admin_allow_remote: AdminListen may be off loopback.
	AdminAllowRemote bool

	HandshakeTimeout      time.Duration
	ServerGreetingTimeout time.Duration // [vncgate] server_greeting_timeout: backend.Dialer.GreetingTimeout
	IdleTimeout           time.Duration
	MaxSessionLength      time.Duration
	// TCPKeepAlive is the keep-alive period of client and VNC server
	// connections, in Go's terms: negative is off (tcp_keepalive = 0).
	TCPKeepAlive time.Duration
	DrainTimeout time.Duration
	// ShutdownDelay is how long the proxy still accepts clients after
	// SIGTERM while /healthz answers 503, so a load balancer notices first.
	ShutdownDelay time.Duration

	FailedTokenLimit       int
	FailedTokenWindow      time.Duration
	MaxSessionsPerInstance int

	// RFB is the RFB security proxy's settings ([vnc] auth_schemes, vencrypt_*).
	RFB rfbproxy.Options
	// Live is the proxy's name, its live sessions' lease in etcd and its
	// audit outputs ([vncgate] proxy_name, live_sessions_*, audit_*).
	Live livesessions.Settings

	Log logging.Options
}

// loadConfig reads xvp-proxy's options from args, the environment and the
// files they name (pkg/config), and checks them.
func loadConfig(args []string) (Config, config.Notes, error) {
	var c Config
	var keepAlive time.Duration
	s := config.New("xvp-proxy")
	s.String(&c.Host, config.SectionVNC, "xvpvncproxy_host", "0.0.0.0", "address to listen on for XVP clients")
	s.Int(&c.Port, config.SectionVNC, "xvpvncproxy_port", 6081, "port to listen on for XVP clients")
	s.Bool(&c.VNCEnabled, config.SectionVNC, "enabled", true, "VNC consoles on; xvp-proxy refuses to start without").Flag("vnc_enabled")
	s.String(&c.Cert, config.SectionDefault, "cert", "", "PEM certificate for TLS on the listener; holds the key too when key is empty")
	s.String(&c.Key, config.SectionDefault, "key", "", "PEM private key of cert, when in a file of its own")
	s.Bool(&c.SourceIsIPv6, config.SectionDefault, "source_is_ipv6", false, "resolve xvpvncproxy_host to its IPv6 addresses")
	s.String(&c.SSLMinimumVersion, config.SectionConsole, "ssl_minimum_version", "default", "minimum TLS version on the listener: default (TLS 1.2), tlsv1_1, tlsv1_2 or tlsv1_3")
	s.String(&c.SSLCiphers, config.SectionConsole, "ssl_ciphers", "", "OpenSSL cipher string for TLS 1.2 (empty: Go's defaults)")
	s.List(&c.TrustedProxies, config.SectionVNCGate, "trusted_proxies", nil, "addresses or CIDRs of load balancers (HAProxy send-proxy/send-proxy-v2) whose connections must begin with a PROXY protocol v1/v2 header naming the client")
	s.Bool(&c.AllowPlaintext, config.SectionVNCGate, "allow_plaintext", false, "allow a plaintext listener, and plaintext links to consoleauth and etcd, off loopback (e.g. behind a TLS-terminating load balancer on a private network)")
	s.Int(&c.MaxConnections, config.SectionVNCGate, "max_connections", DefaultMaxConnections, "open connections allowed on the listener; past it new ones get 503 (0: no cap)")
	s.Int(&c.MaxConnectionsPerClient, config.SectionVNCGate, "max_connections_per_client", DefaultMaxConnectionsPerClient, "open connections allowed per client address (an IPv6 client is its /64; behind trusted_proxies, the PROXY header's); past it new ones get 503 (0: no cap)")
	s.String(&c.ConsoleAuthAddress, config.SectionVNCGate, "consoleauth_address", "127.0.0.1:6090",
		"consoleauth gRPC address: "+tokencheck.AddressHelp+"; admin_listen's /healthz and /readyz answer 503 while none can answer")
	s.TLS(&c.GRPC, config.SectionVNCGate, "grpc", "the client of consoleauth")
	s.List(&c.EtcdEndpoints, config.SectionVNCGate, "etcd_endpoints", []string{DefaultEtcdEndpoint}, "etcd endpoints for revocation watching; empty turns it off (warned at start)")
	s.TLS(&c.Etcd, config.SectionVNCGate, "etcd", "the etcd client")
	s.String(&c.AdminListen, config.SectionVNCGate, admin.Option, DefaultAdminListen, admin.Help(DefaultAdminListen)+"; also serves /healthz for load balancers")
	s.Bool(&c.AdminAllowRemote, config.SectionVNCGate, admin.AllowRemoteOption, false, admin.AllowRemoteHelp)
	s.Seconds(&c.HandshakeTimeout, config.SectionVNCGate, "handshake_timeout", 10*time.Second, "time from accept to the 200 answer: request head, token check, VNC dial")
	s.Seconds(&c.ServerGreetingTimeout, config.SectionVNCGate, backend.GreetingOption, backend.DefaultGreetingTimeout, backend.GreetingHelp)
	s.Seconds(&c.IdleTimeout, config.SectionVNCGate, "idle_timeout", 0, "end a session after this long without a byte either way (0: never)")
	s.Seconds(&c.MaxSessionLength, config.SectionVNCGate, "max_session_length", 0, "end a session after this long (0: never)")
	s.Seconds(&keepAlive, config.SectionVNCGate, "tcp_keepalive", 30*time.Second, "TCP keep-alive period on client and VNC connections (0: off)")
	s.Seconds(&c.DrainTimeout, config.SectionVNCGate, "drain_timeout", 30*time.Second, "on shutdown, how long live sessions may continue before they are closed")
	s.Seconds(&c.ShutdownDelay, config.SectionVNCGate, "shutdown_delay", DefaultShutdownDelay, "on shutdown, how long /healthz answers 503 while the proxy still accepts clients (long enough for a load balancer to notice), before the port closes")
	s.Int(&c.FailedTokenLimit, config.SectionVNCGate, "failed_token_limit", 10, "invalid tokens per client address and token prefix within failed_token_window before that key's checks are slowed down, never refused (0: no limit)")
	s.Seconds(&c.FailedTokenWindow, config.SectionVNCGate, "failed_token_window", time.Minute, "window of failed_token_limit")
	s.Int(&c.MaxSessionsPerInstance, config.SectionVNCGate, "max_sessions_per_instance", 0, "live sessions allowed per instance, across every proxy sharing etcd (slots in etcd; this proxy's own count too, alone while etcd is unreachable) (0: no limit)")
	c.RFB.Declare(s)
	c.Live.Declare(s)
	c.Log.Declare(s)
	notes, err := s.Load(args)
	if err != nil {
		return Config{}, notes, err
	}
	c.TCPKeepAlive = keepAlive
	if keepAlive == 0 {
		c.TCPKeepAlive = -1
	}
	return c, notes, c.validate()
}

// Defaults of the connection caps and the revocation watch (see
// novnc-proxy's for the reasoning).
const (
	DefaultMaxConnections          = 16384
	DefaultMaxConnectionsPerClient = 100
	DefaultEtcdEndpoint            = "127.0.0.1:2379"
	DefaultAdminListen             = "127.0.0.1:6181"
)

// DefaultShutdownDelay is shutdown_delay's default, as novnc-proxy's: a
// load balancer checking every 0.5-2 s marks a replica down within it.
const DefaultShutdownDelay = 5 * time.Second

// public is the TLS of the listener.
func (c Config) public() tlsconfig.Public {
	return tlsconfig.Public{Cert: c.Cert, Key: c.Key, MinimumVersion: c.SSLMinimumVersion, Ciphers: c.SSLCiphers}
}

func (c Config) validate() error {
	switch {
	case !c.VNCEnabled:
		return errors.New("[vnc] enabled is false: there are no VNC consoles to proxy; do not run xvp-proxy, or set enabled = true")
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("xvpvncproxy_port %d: want 0 to 65535", c.Port)
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("handshake_timeout %v: want > 0", c.HandshakeTimeout)
	case c.IdleTimeout < 0 || c.MaxSessionLength < 0 || c.DrainTimeout < 0 || c.ShutdownDelay < 0:
		return fmt.Errorf("idle_timeout, max_session_length, drain_timeout and shutdown_delay: want >= 0")
	case c.FailedTokenLimit < 0 || c.MaxSessionsPerInstance < 0:
		return fmt.Errorf("failed_token_limit and max_sessions_per_instance: want >= 0")
	case c.FailedTokenLimit > 0 && c.FailedTokenWindow <= 0:
		return fmt.Errorf("failed_token_window %v: want > 0", c.FailedTokenWindow)
	case c.MaxConnections < 0 || c.MaxConnectionsPerClient < 0:
		return fmt.Errorf("max_connections and max_connections_per_client: want >= 0 (0: no cap)")
	}
	if _, err := grpcclient.ParseEndpoints(tokencheck.Option, c.ConsoleAuthAddress); err != nil {
		return err
	}
	if err := backend.CheckGreetingTimeout(c.ServerGreetingTimeout, c.HandshakeTimeout); err != nil {
		return err
	}
	if _, err := edge.ParseTrust(c.TrustedProxies); err != nil {
		return err
	}
	if err := admin.Validate(c.AdminListen); err != nil {
		return err
	}
	if err := c.GRPC.Check(); err != nil {
		return fmt.Errorf("grpc_key: %w", err)
	}
	if err := c.Etcd.Check(); err != nil {
		return fmt.Errorf("etcd_key: %w", err)
	}
	if _, err := c.RFB.Config(); err != nil {
		return err
	}
	if err := c.Live.Check(); err != nil {
		return err
	}
	if c.MaxSessionsPerInstance > livesessions.MaxSlots {
		return fmt.Errorf("max_sessions_per_instance %d: want at most %d", c.MaxSessionsPerInstance, livesessions.MaxSlots)
	}
	_, err := c.public().Check()
	return err
}

// checkPlaintext refuses plaintext off loopback unless allow_plaintext:
// the listener without cert, and the consoleauth and etcd links without
// TLS, and admin_listen (pprof, metrics). It is checked when the proxy
// starts.
func (c Config) checkPlaintext() error {
	if err := admin.CheckAddr(c.AdminListen, c.AllowPlaintext || c.AdminAllowRemote); err != nil {
		return err
	}
	if c.Cert == "" {
		if err := tlsconfig.CheckPlaintext("xvpvncproxy_host", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), c.AllowPlaintext); err != nil {
			return err
		}
	}
	return tokencheck.CheckPlaintextLinks(c.ConsoleAuthAddress, c.GRPC.Enabled(), c.EtcdEndpoints, c.Etcd.Enabled(), c.AllowPlaintext)
}
