package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/backend"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/livesessions"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/pkg/tokencheck"
)

// Config is novnc-proxy's configuration. Options are Nova's where Nova has
// them, in Nova's sections; the others are in [vncgate].
type Config struct {
	Host           string   // [vnc] novncproxy_host
	Port           int      // [vnc] novncproxy_port
	BaseURL        string   // [vnc] novncproxy_base_url
	VNCEnabled     bool     // [vnc] enabled; false refuses to start
	AllowedOrigins []string // [console] allowed_origins
	TrustedProxies []string
	SourceIsIPv6   bool // [DEFAULT] source_is_ipv6
	// AllowPlaintext ([vncgate] allow_plaintext) lets the public port, the
	// consoleauth link and the etcd link be plaintext off loopback.
	AllowPlaintext bool

	// MaxConnections and MaxConnectionsPerClient cap open connections on
	// the public port, in all and per client address (0: no cap).
	MaxConnections          int
	MaxConnectionsPerClient int

	SSLOnly           bool   // [DEFAULT] ssl_only
	Cert, Key         string // [DEFAULT] cert and key (key may be inside cert)
	SSLMinimumVersion string // [console] ssl_minimum_version
	SSLCiphers        string // [console] ssl_ciphers

	Web      string // [DEFAULT] web: another noVNC build to serve instead of our page
	NoVNCDir string // the noVNC library under our page; "" finds it

	ConsoleAuthAddress string
	GRPC               tlsconfig.Files // mTLS to consoleauth
	EtcdEndpoints      []string
	Etcd               tlsconfig.Files

	HandshakeTimeout       time.Duration
	DialTimeout            time.Duration
	ServerGreetingTimeout  time.Duration // [vncgate] server_greeting_timeout: backend.Dialer.GreetingTimeout
	PingInterval           time.Duration
	IdleTimeout            time.Duration
	MaxSessionLength       time.Duration
	EnforceSessionTimeout  bool // [consoleauth] enforce_session_timeout
	RevocationGrace        time.Duration
	MaxSessionsPerInstance int
	FailedTokenLimit       int
	FailedTokenWindow      time.Duration
	DrainTimeout           time.Duration
	ShutdownDelay          time.Duration
	// AdminListen is [vncgate] admin_listen: /livez, /readyz, /metrics,
	// /debug/pprof/ (package admin), never on the public port; empty
	// turns it off.
	AdminListen string
	// AdminAllowRemote is [vncgate] admin_allow_remote: AdminListen may be off loopback.
	AdminAllowRemote bool

	// RFB is the RFB security proxy's settings ([vnc] auth_schemes, vencrypt_*).
	RFB rfbproxy.Options
	// Live is the proxy's name, its live sessions' lease in etcd and its
	// audit outputs ([vncgate] proxy_name, live_sessions_*, audit_*).
	Live livesessions.Settings

	Log logging.Options
}

// loadConfig reads novnc-proxy's options from args, the environment and
// the files they name (pkg/config), and checks them.
func loadConfig(args []string) (Config, config.Notes, error) {
	var c Config
	s := config.New("novnc-proxy")
	s.String(&c.Host, config.SectionVNC, "novncproxy_host", "0.0.0.0", "address to listen on")
	s.Int(&c.Port, config.SectionVNC, "novncproxy_port", 6080, "port to listen on")
	s.String(&c.BaseURL, config.SectionVNC, "novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html", "public URL of the console page; its host is the allowed WebSocket Origin")
	s.Bool(&c.VNCEnabled, config.SectionVNC, "enabled", true, "VNC consoles on; novnc-proxy refuses to start without").Flag("vnc_enabled")
	s.List(&c.AllowedOrigins, config.SectionConsole, "allowed_origins", nil, "extra hosts allowed as WebSocket Origin")
	s.String(&c.SSLMinimumVersion, config.SectionConsole, "ssl_minimum_version", "default", "minimum TLS version: default (TLS 1.2), tlsv1_1, tlsv1_2 or tlsv1_3")
	s.String(&c.SSLCiphers, config.SectionConsole, "ssl_ciphers", "", "OpenSSL cipher string for TLS 1.2 (empty: Go's defaults)")
	s.Bool(&c.SSLOnly, config.SectionDefault, "ssl_only", false, "refuse plain HTTP (needs cert); without it, TLS and plain share the port")
	s.String(&c.Cert, config.SectionDefault, "cert", "", "PEM certificate for TLS on the public port; holds the key too when key is empty")
	s.String(&c.Key, config.SectionDefault, "key", "", "PEM private key of cert, when in a file of its own")
	s.Bool(&c.SourceIsIPv6, config.SectionDefault, "source_is_ipv6", false, "resolve novncproxy_host to its IPv6 addresses")
	s.String(&c.Web, config.SectionDefault, "web", "", "serve this noVNC build (e.g. /usr/share/novnc) instead of the vncgate console page")
	s.Bool(&c.EnforceSessionTimeout, config.SectionConsoleAuth, "enforce_session_timeout", false, "end a session when its token expires")
	s.List(&c.TrustedProxies, config.SectionVNCGate, "trusted_proxies", nil, "addresses or CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed")
	s.Bool(&c.AllowPlaintext, config.SectionVNCGate, "allow_plaintext", false, "allow plain HTTP on the public port, and plaintext links to consoleauth and etcd, off loopback (e.g. behind a TLS-terminating load balancer on a private network)")
	s.Int(&c.MaxConnections, config.SectionVNCGate, "max_connections", DefaultMaxConnections, "open connections allowed on the public port, sessions and requests alike; past it new ones get 503 (0: no cap)")
	s.Int(&c.MaxConnectionsPerClient, config.SectionVNCGate, "max_connections_per_client", DefaultMaxConnectionsPerClient, "open connections allowed per client address (an IPv6 client is its /64; behind trusted_proxies, the forwarded address); past it new ones get 503 (0: no cap)")
	s.String(&c.NoVNCDir, config.SectionVNCGate, "novnc_core_dir", "", "directory of the @novnc/novnc package (holding core/rfb.js) for the console page; empty: look next to the binary and in the working directory")
	s.String(&c.ConsoleAuthAddress, config.SectionVNCGate, "consoleauth_address", "127.0.0.1:6090",
		"consoleauth gRPC address: "+tokencheck.AddressHelp+"; /healthz answers 503 while none can answer")
	s.TLS(&c.GRPC, config.SectionVNCGate, "grpc", "the client of consoleauth")
	s.List(&c.EtcdEndpoints, config.SectionVNCGate, "etcd_endpoints", []string{DefaultEtcdEndpoint}, "etcd endpoints, to end sessions when tokens are revoked; empty: no revocation watch (warned at start)")
	s.TLS(&c.Etcd, config.SectionVNCGate, "etcd", "the etcd client")
	s.Seconds(&c.HandshakeTimeout, config.SectionVNCGate, "handshake_timeout", 10*time.Second, "limit for TLS, the HTTP request head, and the token check and dial of an upgrade")
	s.Seconds(&c.DialTimeout, config.SectionVNCGate, "dial_timeout", 5*time.Second, "limit for connecting to the VNC server")
	s.Seconds(&c.ServerGreetingTimeout, config.SectionVNCGate, backend.GreetingOption, backend.DefaultGreetingTimeout, backend.GreetingHelp)
	s.Seconds(&c.PingInterval, config.SectionVNCGate, "ping_interval", 20*time.Second, "WebSocket ping period, keeping load balancers from dropping quiet consoles (0: off)")
	s.Seconds(&c.IdleTimeout, config.SectionVNCGate, "idle_timeout", 0, "end a session when no byte moved for this long (0: never)")
	s.Seconds(&c.MaxSessionLength, config.SectionVNCGate, "max_session_length", 0, "end sessions after this long (0: never)")
	s.Seconds(&c.RevocationGrace, config.SectionVNCGate, "revocation_grace", 3*time.Second, "when a VM's VNC server closes, wait this long for a revocation to tell the user why (hypervisors close the socket before they report the stop)")
	s.Int(&c.MaxSessionsPerInstance, config.SectionVNCGate, "max_sessions_per_instance", 0, "concurrent sessions allowed per instance, across every proxy sharing etcd (slots in etcd; this proxy's own count too, alone while etcd is unreachable) (0: no cap)")
	s.Int(&c.FailedTokenLimit, config.SectionVNCGate, "failed_token_limit", 10, "invalid tokens per client address and token prefix per window before that key's checks are slowed down, never refused (0: no limit)")
	s.Seconds(&c.FailedTokenWindow, config.SectionVNCGate, "failed_token_window", time.Minute, "window of failed_token_limit")
	s.Seconds(&c.DrainTimeout, config.SectionVNCGate, "drain_timeout", 30*time.Second, "on shutdown, how long live sessions may go on before they are ended")
	s.Seconds(&c.ShutdownDelay, config.SectionVNCGate, "shutdown_delay", DefaultShutdownDelay, "on shutdown, how long /healthz answers 503 while the proxy still accepts consoles (long enough for a load balancer to notice), before the port closes")
	s.String(&c.AdminListen, config.SectionVNCGate, admin.Option, DefaultAdminListen, admin.Help(DefaultAdminListen))
	s.Bool(&c.AdminAllowRemote, config.SectionVNCGate, admin.AllowRemoteOption, false, admin.AllowRemoteHelp)
	c.RFB.Declare(s)
	c.Live.Declare(s)
	c.Log.Declare(s)
	notes, err := s.Load(args)
	if err != nil {
		return Config{}, notes, err
	}
	return c, notes, c.validate()
}

// Defaults of the connection caps and the revocation watch.
const (
	// DefaultMaxConnections: an idle session costs about 40 KiB and two
	// file descriptors (client and VNC server), so 16,384 is some 650 MiB
	// and needs LimitNOFILE above 32,768.
	DefaultMaxConnections = 16384
	// DefaultMaxConnectionsPerClient: a browser console is one WebSocket;
	// 100 leaves room for an office behind one NAT.
	DefaultMaxConnectionsPerClient = 100
	// DefaultEtcdEndpoint is where make run's (and a compute host's) etcd
	// listens.
	DefaultEtcdEndpoint = "127.0.0.1:2379"
)

// public is the TLS of the public port.
func (c Config) public() tlsconfig.Public {
	return tlsconfig.Public{Cert: c.Cert, Key: c.Key, MinimumVersion: c.SSLMinimumVersion, Ciphers: c.SSLCiphers}
}

// DefaultShutdownDelay is shutdown_delay's default: a load balancer
// checking every 0.5-2 s marks a replica down within it (HAProxy with
// "inter 500ms fall 2" in about 1 s).
const DefaultShutdownDelay = 5 * time.Second

// DefaultAdminListen is admin_listen's default: loopback, beside the
// public port's 6080.
const DefaultAdminListen = "127.0.0.1:6180"

func (c Config) validate() error {
	if !c.VNCEnabled {
		return errors.New("[vnc] enabled is false: there are no VNC consoles to proxy; do not run novnc-proxy, or set enabled = true")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("novncproxy_port %d out of range", c.Port)
	}
	if c.SSLOnly && c.Cert == "" {
		return fmt.Errorf("ssl_only needs cert")
	}
	if _, err := c.public().Check(); err != nil {
		return err
	}
	if c.FailedTokenLimit < 0 || c.MaxSessionsPerInstance < 0 {
		return fmt.Errorf("failed_token_limit and max_sessions_per_instance must not be negative")
	}
	if c.MaxConnections < 0 || c.MaxConnectionsPerClient < 0 {
		return fmt.Errorf("max_connections and max_connections_per_client must not be negative (0: no cap)")
	}
	if _, err := grpcclient.ParseEndpoints(tokencheck.Option, c.ConsoleAuthAddress); err != nil {
		return err
	}
	if err := backend.CheckGreetingTimeout(c.ServerGreetingTimeout, c.HandshakeTimeout); err != nil {
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
	return nil
}

// checkPlaintext refuses plaintext off loopback unless allow_plaintext:
// the public port without cert, and the consoleauth and etcd links
// without TLS, and admin_listen (pprof, metrics). It is checked when the
// proxy starts.
func (c Config) checkPlaintext() error {
	if err := admin.CheckAddr(c.AdminListen, c.AllowPlaintext || c.AdminAllowRemote); err != nil {
		return err
	}
	if c.Cert == "" {
		if err := tlsconfig.CheckPlaintext("novncproxy_host", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), c.AllowPlaintext); err != nil {
			return err
		}
	}
	return tokencheck.CheckPlaintextLinks(c.ConsoleAuthAddress, c.GRPC.Enabled(), c.EtcdEndpoints, c.Etcd.Enabled(), c.AllowPlaintext)
}

// noVNCCandidates are where the noVNC library is looked for when
// novnc_core_dir is empty: next to the binary, next to bin/ in a checkout,
// from the working directory (the module or the repository root), and in
// the checkout the binary was built from (so binaries built into a temporary
// folder by tests find it; a -trimpath build has no such folder).
func noVNCCandidates() []string {
	const pkg = "node_modules/@novnc/novnc"
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		dirs = append(dirs, filepath.Join(d, "web", pkg), filepath.Join(d, "..", "services", "novnc-proxy", "web", pkg))
	}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, filepath.Join(wd, "web", pkg), filepath.Join(wd, "services", "novnc-proxy", "web", pkg))
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dirs = append(dirs, filepath.Join(filepath.Dir(file), "web", pkg))
	}
	return dirs
}
