package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Config is novnc-proxy's configuration. Flag names are Nova's where Nova
// has the option ([vnc] and [DEFAULT] of nova.conf).
type Config struct {
	Host           string
	Port           int
	BaseURL        string
	AllowedOrigins []string
	TrustedProxies []string

	SSLOnly           bool
	Cert, Key         string
	SSLMinimumVersion string

	Web      string // another noVNC build to serve instead of our page
	NoVNCDir string // the noVNC library under our page; "" finds it

	ConsoleAuthAddress string
	GRPC               tlsconfig.Files // mTLS to consoleauth
	EtcdEndpoints      []string
	Etcd               tlsconfig.Files

	HandshakeTimeout       time.Duration
	DialTimeout            time.Duration
	PingInterval           time.Duration
	IdleTimeout            time.Duration
	MaxSessionLength       time.Duration
	EnforceSessionTimeout  bool
	RevocationGrace        time.Duration
	MaxSessionsPerInstance int
	FailedTokenLimit       int
	FailedTokenWindow      time.Duration
	DrainTimeout           time.Duration
	ShutdownDelay          time.Duration

	LogLevel slog.Level
}

// parseConfig reads flags, then VNCGATE_* variables, then config_file.
func parseConfig(args []string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("novnc-proxy", flag.ContinueOnError)
	fs.StringVar(&c.Host, "novncproxy_host", "0.0.0.0", "address to listen on")
	fs.IntVar(&c.Port, "novncproxy_port", 6080, "port to listen on")
	fs.StringVar(&c.BaseURL, "novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html", "public URL of the console page; its host is the allowed WebSocket Origin")
	fs.Var((*listFlag)(&c.AllowedOrigins), "allowed_origins", "comma-separated extra hosts allowed as WebSocket Origin")
	fs.Var((*listFlag)(&c.TrustedProxies), "trusted_proxies", "comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed")
	fs.BoolVar(&c.SSLOnly, "ssl_only", false, "refuse plain HTTP (needs cert and key); without it, TLS and plain share the port")
	fs.StringVar(&c.Cert, "cert", "", "PEM certificate for TLS on the public port")
	fs.StringVar(&c.Key, "key", "", "PEM private key for TLS on the public port")
	fs.StringVar(&c.SSLMinimumVersion, "ssl_minimum_version", "default", "minimum TLS version: default (1.2), tlsv1_1, tlsv1_2, tlsv1_3")
	fs.StringVar(&c.Web, "web", "", "serve this noVNC build (e.g. /usr/share/novnc) instead of the vncgate console page")
	fs.StringVar(&c.NoVNCDir, "novnc_core_dir", "", "directory of the @novnc/novnc package (holding core/rfb.js) for the console page; empty: look next to the binary and in the working directory")
	fs.StringVar(&c.ConsoleAuthAddress, "consoleauth_address", "127.0.0.1:6090", "consoleauth gRPC address")
	fs.StringVar(&c.GRPC.Cert, "grpc_cert", "", "client certificate for mTLS to consoleauth")
	fs.StringVar(&c.GRPC.Key, "grpc_key", "", "client key for mTLS to consoleauth")
	fs.StringVar(&c.GRPC.CA, "grpc_ca", "", "CA that signs consoleauth's certificate")
	fs.Var((*listFlag)(&c.EtcdEndpoints), "etcd_endpoints", "comma-separated etcd endpoints, to end sessions when tokens are revoked; empty: no revocation watch")
	fs.StringVar(&c.Etcd.Cert, "etcd_cert", "", "client certificate for etcd")
	fs.StringVar(&c.Etcd.Key, "etcd_key", "", "client key for etcd")
	fs.StringVar(&c.Etcd.CA, "etcd_ca", "", "CA that signs etcd's certificate")
	secondsVar(fs, &c.HandshakeTimeout, "handshake_timeout", 10*time.Second, "limit for TLS, the HTTP request head, and the token check and dial of an upgrade")
	secondsVar(fs, &c.DialTimeout, "dial_timeout", 5*time.Second, "limit for connecting to the VNC server")
	secondsVar(fs, &c.PingInterval, "ping_interval", 20*time.Second, "WebSocket ping period, keeping load balancers from dropping quiet consoles (0: off)")
	secondsVar(fs, &c.IdleTimeout, "idle_timeout", 0, "end a session when no byte moved for this long (0: never)")
	secondsVar(fs, &c.MaxSessionLength, "max_session_length", 0, "end sessions after this long (0: never)")
	fs.BoolVar(&c.EnforceSessionTimeout, "enforce_session_timeout", false, "end a session when its token expires")
	secondsVar(fs, &c.RevocationGrace, "revocation_grace", 3*time.Second, "when a VM's VNC server closes, wait this long for a revocation to tell the user why (hypervisors close the socket before they report the stop)")
	fs.IntVar(&c.MaxSessionsPerInstance, "max_sessions_per_instance", 0, "concurrent sessions allowed per instance on this proxy (0: no cap)")
	fs.IntVar(&c.FailedTokenLimit, "failed_token_limit", 10, "failed tokens allowed per client address per window (0: no limit)")
	secondsVar(fs, &c.FailedTokenWindow, "failed_token_window", time.Minute, "window of failed_token_limit")
	secondsVar(fs, &c.DrainTimeout, "drain_timeout", 30*time.Second, "on shutdown, how long live sessions may go on before they are ended")
	secondsVar(fs, &c.ShutdownDelay, "shutdown_delay", 0, "on shutdown, how long /healthz answers 503 before the port closes")
	level := fs.String("log_level", "info", "debug, info, warn or error")
	if err := config.Load(fs, args); err != nil {
		return Config{}, err
	}
	if err := c.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return Config{}, fmt.Errorf("log_level: %w", err)
	}
	return c, c.validate()
}

func (c Config) validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("novncproxy_port %d out of range", c.Port)
	}
	if (c.Cert == "") != (c.Key == "") {
		return fmt.Errorf("cert and key go together")
	}
	if c.SSLOnly && c.Cert == "" {
		return fmt.Errorf("ssl_only needs cert and key")
	}
	if _, err := tlsMinVersion(c.SSLMinimumVersion); err != nil {
		return err
	}
	if c.FailedTokenLimit < 0 || c.MaxSessionsPerInstance < 0 {
		return fmt.Errorf("failed_token_limit and max_sessions_per_instance must not be negative")
	}
	return nil
}

// tlsMinVersion reads Nova's ssl_minimum_version.
func tlsMinVersion(s string) (uint16, error) {
	switch strings.ToLower(s) {
	case "", "default", "tlsv1_2", "1.2":
		return tls.VersionTLS12, nil
	case "tlsv1_3", "1.3":
		return tls.VersionTLS13, nil
	case "tlsv1_1", "1.1":
		return tls.VersionTLS11, nil
	}
	return 0, fmt.Errorf("ssl_minimum_version %q: want default, tlsv1_1, tlsv1_2 or tlsv1_3", s)
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

// listFlag is a comma-separated list (Nova's ListOpt).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// secondsFlag takes whole seconds, as nova.conf does ("20"), or a Go
// duration ("1m30s").
type secondsFlag time.Duration

func secondsVar(fs *flag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var((*secondsFlag)(p), name, usage+" (seconds, or a duration like 1m30s)")
}

func (s *secondsFlag) String() string { return time.Duration(*s).String() }
func (s *secondsFlag) Set(v string) error {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if n < 0 {
			return fmt.Errorf("negative")
		}
		*s = secondsFlag(n * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want seconds or a duration, got %q", v)
	}
	*s = secondsFlag(d)
	return nil
}
