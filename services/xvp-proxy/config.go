package main

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/rfbproxy"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
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

	ConsoleAuthAddress string
	GRPC               tlsconfig.Files // mTLS to consoleauth

	EtcdEndpoints []string        // empty turns revocation watching off
	Etcd          tlsconfig.Files // TLS to etcd

	// MetricsListen is the host:port of the HTTP listener for /metrics and
	// /healthz; empty turns it off.
	MetricsListen string

	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxSessionLength time.Duration
	// TCPKeepAlive is the keep-alive period of client and VNC server
	// connections, in Go's terms: negative is off (tcp_keepalive = 0).
	TCPKeepAlive time.Duration
	DrainTimeout time.Duration

	FailedTokenLimit       int
	FailedTokenWindow      time.Duration
	MaxSessionsPerInstance int

	// RFB is the RFB security proxy's settings ([vnc] auth_schemes, vencrypt_*).
	RFB rfbproxy.Options

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
	s.String(&c.ConsoleAuthAddress, config.SectionVNCGate, "consoleauth_address", "127.0.0.1:6090", "consoleauth gRPC address")
	s.TLS(&c.GRPC, config.SectionVNCGate, "grpc", "the client of consoleauth")
	s.List(&c.EtcdEndpoints, config.SectionVNCGate, "etcd_endpoints", nil, "etcd endpoints for revocation watching; empty turns it off")
	s.TLS(&c.Etcd, config.SectionVNCGate, "etcd", "the etcd client")
	s.String(&c.MetricsListen, config.SectionVNCGate, "metrics_listen", "", "host:port of a plain HTTP listener serving /metrics (Prometheus) and /healthz, e.g. 127.0.0.1:9181; empty turns it off")
	s.Seconds(&c.HandshakeTimeout, config.SectionVNCGate, "handshake_timeout", 10*time.Second, "time from accept to the 200 answer: request head, token check, VNC dial")
	s.Seconds(&c.IdleTimeout, config.SectionVNCGate, "idle_timeout", 0, "end a session after this long without a byte either way (0: never)")
	s.Seconds(&c.MaxSessionLength, config.SectionVNCGate, "max_session_length", 0, "end a session after this long (0: never)")
	s.Seconds(&keepAlive, config.SectionVNCGate, "tcp_keepalive", 30*time.Second, "TCP keep-alive period on client and VNC connections (0: off)")
	s.Seconds(&c.DrainTimeout, config.SectionVNCGate, "drain_timeout", 30*time.Second, "on shutdown, how long live sessions may continue before they are closed")
	s.Int(&c.FailedTokenLimit, config.SectionVNCGate, "failed_token_limit", 10, "failed tokens allowed per client IP within failed_token_window before 429 (0: no limit)")
	s.Seconds(&c.FailedTokenWindow, config.SectionVNCGate, "failed_token_window", time.Minute, "window of failed_token_limit")
	s.Int(&c.MaxSessionsPerInstance, config.SectionVNCGate, "max_sessions_per_instance", 0, "live sessions allowed per instance (0: no limit)")
	c.RFB.Declare(s)
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
	case c.ConsoleAuthAddress == "":
		return fmt.Errorf("consoleauth_address: required")
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("handshake_timeout %v: want > 0", c.HandshakeTimeout)
	case c.IdleTimeout < 0 || c.MaxSessionLength < 0 || c.DrainTimeout < 0:
		return fmt.Errorf("idle_timeout, max_session_length and drain_timeout: want >= 0")
	case c.FailedTokenLimit < 0 || c.MaxSessionsPerInstance < 0:
		return fmt.Errorf("failed_token_limit and max_sessions_per_instance: want >= 0")
	case c.FailedTokenLimit > 0 && c.FailedTokenWindow <= 0:
		return fmt.Errorf("failed_token_window %v: want > 0", c.FailedTokenWindow)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen %q: want host:port", c.MetricsListen)
		}
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
	_, err := c.public().Check()
	return err
}
