package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Config is everything xvp-proxy is told at start.
type Config struct {
	Host string // xvpvncproxy_host
	Port int    // xvpvncproxy_port

	// Cert and Key turn on TLS on the listener; SSLMinimumVersion is Nova's
	// ssl_minimum_version ("default" is TLS 1.2).
	Cert, Key, SSLMinimumVersion string

	ConsoleauthAddress string
	GRPC               tlsconfig.Files // mTLS to consoleauth

	EtcdEndpoints string          // comma-separated; empty turns revocation watching off
	Etcd          tlsconfig.Files // TLS to etcd

	// MetricsListen is the host:port of the HTTP listener for /metrics and
	// /healthz; empty turns it off.
	MetricsListen string

	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxSessionLength time.Duration
	// TCPKeepAlive is the keep-alive period of client and VNC server
	// connections; 0 means Go's default (15 s), negative turns it off.
	TCPKeepAlive time.Duration
	DrainTimeout time.Duration

	FailedTokenLimit       int
	FailedTokenWindow      time.Duration
	MaxSessionsPerInstance int

	LogLevel string
}

// registerFlags defines xvp-proxy's flags on fs and returns the Config they fill.
func registerFlags(fs *flag.FlagSet) *Config {
	c := &Config{}
	fs.StringVar(&c.Host, "xvpvncproxy_host", "0.0.0.0", "address to listen on for XVP clients")
	fs.IntVar(&c.Port, "xvpvncproxy_port", 6081, "port to listen on for XVP clients")
	fs.StringVar(&c.Cert, "cert", "", "PEM certificate for TLS on the listener (with key)")
	fs.StringVar(&c.Key, "key", "", "PEM private key for TLS on the listener")
	fs.StringVar(&c.SSLMinimumVersion, "ssl_minimum_version", "default", "minimum TLS version on the listener: default (TLS 1.2), tlsv1_2 or tlsv1_3")
	fs.StringVar(&c.ConsoleauthAddress, "consoleauth_address", "127.0.0.1:6090", "consoleauth gRPC address")
	fs.StringVar(&c.GRPC.Cert, "grpc_cert", "", "client certificate for mTLS to consoleauth")
	fs.StringVar(&c.GRPC.Key, "grpc_key", "", "client key for mTLS to consoleauth")
	fs.StringVar(&c.GRPC.CA, "grpc_ca", "", "CA that signs consoleauth's certificate")
	fs.StringVar(&c.EtcdEndpoints, "etcd_endpoints", "", "comma-separated etcd endpoints for revocation watching; empty turns it off")
	fs.StringVar(&c.Etcd.Cert, "etcd_cert", "", "client certificate for etcd")
	fs.StringVar(&c.Etcd.Key, "etcd_key", "", "client key for etcd")
	fs.StringVar(&c.Etcd.CA, "etcd_ca", "", "CA that signs etcd's certificate")
	fs.StringVar(&c.MetricsListen, "metrics_listen", "", "host:port of a plain HTTP listener serving /metrics (Prometheus) and /healthz, e.g. 127.0.0.1:9181; empty turns it off")
	fs.DurationVar(&c.HandshakeTimeout, "handshake_timeout", 10*time.Second, "time from accept to the 200 answer: request head, token check, VNC dial")
	fs.DurationVar(&c.IdleTimeout, "idle_timeout", 0, "end a session after this long without a byte either way; 0 means never")
	fs.DurationVar(&c.MaxSessionLength, "max_session_length", 0, "end a session after this long; 0 means never")
	fs.DurationVar(&c.TCPKeepAlive, "tcp_keepalive", 30*time.Second, "TCP keep-alive period on client and VNC connections; negative turns it off")
	fs.DurationVar(&c.DrainTimeout, "drain_timeout", 30*time.Second, "on shutdown, how long live sessions may continue before they are closed")
	fs.IntVar(&c.FailedTokenLimit, "failed_token_limit", 10, "failed tokens allowed per client IP within failed_token_window before 429; 0 means no limit")
	fs.DurationVar(&c.FailedTokenWindow, "failed_token_window", time.Minute, "window of failed_token_limit")
	fs.IntVar(&c.MaxSessionsPerInstance, "max_sessions_per_instance", 0, "live sessions allowed per instance; 0 means no limit")
	fs.StringVar(&c.LogLevel, "log_level", "info", "debug, info, warn or error")
	return c
}

// tlsMinVersion maps Nova's ssl_minimum_version names. TLS 1.0 and 1.1 are
// refused: no supported Java runtime needs them.
func tlsMinVersion(name string) (uint16, error) {
	switch strings.ToLower(name) {
	case "", "default", "tlsv1_2":
		return tls.VersionTLS12, nil
	case "tlsv1_3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("ssl_minimum_version %q: want default, tlsv1_2 or tlsv1_3", name)
}

func (c Config) validate() error {
	switch {
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("xvpvncproxy_port %d: want 0 to 65535", c.Port)
	case (c.Cert == "") != (c.Key == ""):
		return fmt.Errorf("cert and key: give both or neither")
	case c.ConsoleauthAddress == "":
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
	_, err := tlsMinVersion(c.SSLMinimumVersion)
	return err
}
