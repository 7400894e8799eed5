package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
)

// Config is consoleauth's configuration.
type Config struct {
	server.Config
	// VNCEnabled is [vnc] enabled. Without VNC every console type
	// consoleauth knows is off: console requests get 501, as Nova's API
	// answers for a console type that is not available.
	VNCEnabled bool
	// AdminListen is [vncgate] admin_listen: /livez, /readyz, /metrics,
	// /debug/pprof/ (package admin); empty turns it off.
	AdminListen string
	// AdminAllowRemote is [vncgate] admin_allow_remote: AdminListen may be off loopback.
	AdminAllowRemote bool
	Log              logging.Options
	// Tracing is [vncgate] otlp_endpoint: traces of gRPC calls.
	Tracing grpcserver.TracingOptions
}

// loadConfig reads consoleauth's options from args, the environment and
// the files they name (pkg/config), under Nova's sections and names.
func loadConfig(args []string) (Config, config.Notes, error) {
	var c Config
	s := config.New("consoleauth")
	s.String(&c.NoVNCBaseURL, config.SectionVNC, "novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html", "public base URL of the noVNC console page")
	s.String(&c.XVPBaseURL, config.SectionVNC, "xvpvncproxy_base_url", "http://127.0.0.1:6081/console", "public base URL of the XVP VNC proxy")
	s.Bool(&c.VNCEnabled, config.SectionVNC, "enabled", true, "VNC consoles on; false answers 501 to every console request").Flag("vnc_enabled")
	s.Seconds(&c.TokenTTL, config.SectionConsoleAuth, "token_ttl", 600*time.Second, "how long a console token is valid")
	s.Int(&c.TokenCacheSize, config.SectionConsoleAuth, "token_cache_size", tokenstore.DefaultTokenCacheSize,
		"token records kept in memory, from a watch on etcd, so a token check needs no etcd read (about 500 bytes each; 0: read etcd on every check)")
	s.String(&c.GRPCListen, config.SectionVNCGate, "grpc_listen", "0.0.0.0:6090", "gRPC listen address")
	s.String(&c.RESTListen, config.SectionVNCGate, "rest_listen", "0.0.0.0:6091", "REST (Nova compute API shape) listen address")
	s.List(&c.EtcdEndpoints, config.SectionVNCGate, "etcd_endpoints", []string{"127.0.0.1:2379"}, "etcd endpoints")
	s.TLS(&c.EtcdTLS, config.SectionVNCGate, "etcd", "the etcd client")
	s.Seconds(&c.EtcdTimeout, config.SectionVNCGate, "etcd_timeout", 5*time.Second, "timeout of every etcd call")
	s.TLS(&c.GRPCTLS, config.SectionVNCGate, "grpc", "the gRPC server and of calls to compute agents")
	s.TLS(&c.RESTTLS, config.SectionVNCGate, "rest", "the REST listener (a CA requires callers' certificates)")
	s.Seconds(&c.ComputeTimeout, config.SectionVNCGate, "compute_timeout", 5*time.Second, "timeout of every call to a compute agent")
	s.List(&c.EnabledConsoleTypes, config.SectionVNCGate, "enabled_console_types", []string{"novnc", "xvpvnc"}, "console types served (novnc, xvpvnc)")
	s.Bool(&c.SingleUseTokens, config.SectionVNCGate, "single_use_tokens", false, "a token connects once: CheckToken consumes it")
	s.Bool(&c.AllowPlaintext, config.SectionVNCGate, "allow_plaintext", false, "allow grpc_listen and rest_listen without TLS off loopback (behind a TLS-terminating proxy on a private network)")
	s.Choice(&c.CertRoleSource, config.SectionVNCGate, "cert_role_source", "san", []string{"san", "subject"},
		"where a caller's certificate names its role: the URI SAN urn:vncgate:role:ROLE, or the subject's first OU")
	s.String(&c.APIKeysFile, config.SectionVNCGate, "api_keys_file", "", "REST bearer keys, one a line: NAME ROLE SHA256HEX (make one with `consoleauth keygen NAME ROLE`); reloaded when it changes")
	s.Choice(&c.RESTAuth, config.SectionVNCGate, "rest_auth", "keys", []string{"keys", "keystone"},
		"REST callers authenticate with bearer keys and certificates, or also with Keystone tokens (X-Auth-Token, [keystone_authtoken])")
	s.List(&c.KeystoneMintRoles, config.SectionVNCGate, "keystone_mint_roles", authn.DefaultKeystoneMintRoles,
		"Keystone roles that may mint console URLs (admin may also introspect and revoke)")
	s.List(&c.RESTAllowedHosts, config.SectionVNCGate, "rest_allowed_hosts", nil,
		"names the REST Host header may carry besides localhost, 127.0.0.1 and ::1 (* for any); default: rest_listen's host, or with rest_listen on all interfaces any name for callers with a certificate")
	s.Seconds(&c.DrainTimeout, config.SectionVNCGate, "drain_timeout", 30*time.Second,
		"deadline of a proxy drain (vncgatectl proxy drain) that names none: the proxies' own drain_timeout default")
	s.String(&c.AdminListen, config.SectionVNCGate, admin.Option, "127.0.0.1:6190", admin.Help("127.0.0.1:6190"))
	s.Bool(&c.AdminAllowRemote, config.SectionVNCGate, admin.AllowRemoteOption, false, admin.AllowRemoteHelp)
	c.Keystone.Declare(s)
	c.Log.Declare(s)
	c.Tracing.Declare(s)
	notes, err := s.Load(args)
	if err != nil {
		return Config{}, notes, err
	}
	if !c.VNCEnabled {
		c.EnabledConsoleTypes = nil
	}
	if err := c.check(); err != nil {
		return c, notes, err
	}
	if c.TokenCacheSize == 0 {
		c.TokenCacheSize = -1 // the option's 0 is none, the store's the default
	}
	return c, notes, nil
}

// check refuses settings consoleauth cannot start with; the base URLs are
// checked by server.Start.
func (c Config) check() error {
	switch {
	case c.TokenTTL < time.Second:
		return fmt.Errorf("token_ttl %v: want at least 1 second", c.TokenTTL)
	case c.TokenCacheSize < 0:
		return fmt.Errorf("token_cache_size %d: want 0 (none) or more", c.TokenCacheSize)
	case len(c.EtcdEndpoints) == 0:
		return errors.New("etcd_endpoints is empty")
	case c.RESTAuth == "keystone" && c.Keystone.AuthURL == "":
		return errors.New("rest_auth = keystone needs [keystone_authtoken] auth_url")
	}
	for _, g := range []struct {
		name  string
		files tlsconfig.Files
	}{{"etcd", c.EtcdTLS}, {"grpc", c.GRPCTLS}, {"rest", c.RESTTLS}} {
		if err := g.files.Check(); err != nil {
			return fmt.Errorf("%s_key: %w", g.name, err)
		}
	}
	if err := c.Tracing.Validate(); err != nil {
		return err
	}
	return admin.Validate(c.AdminListen)
}
