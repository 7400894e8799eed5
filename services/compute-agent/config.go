package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/admin"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/grpcserver"
	"github.com/vncgate/vncgate/pkg/logging"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/pkg/tokencheck"
)

// Config is the agent's settings, one field per option.
type Config struct {
	// Host is [DEFAULT] host: this compute host's name, as Nova's.
	Host string
	// MyIP is [DEFAULT] my_ip: this host's address. When grpc_listen's host
	// is a wildcard, the agent advertises my_ip (127.0.0.1 when unset).
	MyIP string
	// VNCEnabled is [vnc] enabled; the agent refuses to start without VNC.
	VNCEnabled bool
	// ProxyClientAddress is [vnc] server_proxyclient_address: the address
	// proxies dial to reach VNC servers on this host.
	ProxyClientAddress string
	// ServerListen is [vnc] server_listen: where nova-compute makes VNC
	// servers listen. vncgate reads each server's own address; this one
	// only serves a start-up check against ProxyClientAddress.
	ServerListen string
	// LibvirtURI is [libvirt] connection_uri.
	LibvirtURI string

	GRPCListen         string
	AdvertiseAddress   string
	EtcdEndpoints      []string
	EtcdTLS            tlsconfig.Files
	GRPCTLS            tlsconfig.Files
	Driver             string
	InventoryFile      string
	QMPSockets         string
	RegistrationTTL    time.Duration
	ConsoleAuthAddress string
	// AllowPlaintext is [vncgate] allow_plaintext: grpc_listen and
	// consoleauth_address without TLS off loopback are refused without it.
	AllowPlaintext bool
	// CertRoleSource is [vncgate] cert_role_source: where callers'
	// certificates name their role (san or subject).
	CertRoleSource string
	// AdminListen is [vncgate] admin_listen: /livez, /readyz, /metrics,
	// /debug/pprof/ (package admin); empty turns it off.
	AdminListen string
	// AdminAllowRemote is [vncgate] admin_allow_remote: AdminListen may be off loopback.
	AdminAllowRemote bool
	Log              logging.Options
	// Tracing is [vncgate] otlp_endpoint: traces of gRPC calls.
	Tracing grpcserver.TracingOptions
}

// loadConfig reads the agent's options from args, the environment and the
// files they name (pkg/config), under Nova's sections and names, and
// checks them.
func loadConfig(args []string) (Config, config.Notes, error) {
	hostname, _ := os.Hostname()
	var c Config
	s := config.New("compute-agent")
	s.String(&c.Host, config.SectionDefault, "host", hostname, "this compute host's name, as registered in etcd (Nova's host)")
	s.String(&c.MyIP, config.SectionDefault, "my_ip", "", "this host's address, advertised when grpc_listen's host is a wildcard (127.0.0.1 when empty)")
	s.Bool(&c.VNCEnabled, config.SectionVNC, "enabled", true, "VNC consoles on; the agent refuses to start without").Flag("vnc_enabled")
	s.String(&c.ProxyClientAddress, config.SectionVNC, "server_proxyclient_address", "127.0.0.1", "address proxies dial to reach VNC servers on this host")
	s.String(&c.ServerListen, config.SectionVNC, "server_listen", "127.0.0.1", "where nova-compute makes VNC servers listen (checked against server_proxyclient_address)")
	s.String(&c.LibvirtURI, config.SectionLibvirt, "connection_uri", "qemu:///system", "libvirt connection URI of the libvirt driver").Flag("libvirt_uri")
	s.String(&c.GRPCListen, config.SectionVNCGate, "grpc_listen", "0.0.0.0:6092", "host:port the gRPC API listens on")
	s.String(&c.AdvertiseAddress, config.SectionVNCGate, "advertise_address", "", "host:port consoleauth dials to reach this agent (default: grpc_listen with a wildcard host replaced by my_ip, or 127.0.0.1)")
	s.List(&c.EtcdEndpoints, config.SectionVNCGate, "etcd_endpoints", []string{"127.0.0.1:2379"}, "etcd endpoints")
	s.TLS(&c.EtcdTLS, config.SectionVNCGate, "etcd", "the etcd client")
	s.TLS(&c.GRPCTLS, config.SectionVNCGate, "grpc", "the gRPC API, also presented to consoleauth")
	s.Choice(&c.Driver, config.SectionVNCGate, "driver", "static", []string{"static", "libvirt", "qmp"}, "where instances come from")
	s.String(&c.InventoryFile, config.SectionVNCGate, "inventory_file", "", "JSON inventory of the static driver")
	s.String(&c.QMPSockets, config.SectionVNCGate, "qmp_sockets", "", "instances of the qmp driver: comma-separated uuid=/path/to/qmp.sock")
	s.Seconds(&c.RegistrationTTL, config.SectionVNCGate, "registration_ttl", 10*time.Second, "how long a dead agent stays registered in etcd")
	s.String(&c.ConsoleAuthAddress, config.SectionVNCGate, "consoleauth_address", "127.0.0.1:6090",
		"consoleauth's gRPC API, to revoke tokens: "+tokencheck.AddressHelp)
	s.Bool(&c.AllowPlaintext, config.SectionVNCGate, "allow_plaintext", false, "allow grpc_listen and consoleauth_address without TLS off loopback")
	s.Choice(&c.CertRoleSource, config.SectionVNCGate, "cert_role_source", "san", []string{"san", "subject"},
		"where a caller's certificate names its role: the URI SAN urn:vncgate:role:ROLE, or the subject's first OU")
	c.Log.Declare(s)
	c.Tracing.Declare(s)
	s.String(&c.AdminListen, config.SectionVNCGate, admin.Option, "127.0.0.1:6192", admin.Help("127.0.0.1:6192"))
	s.Bool(&c.AdminAllowRemote, config.SectionVNCGate, admin.AllowRemoteOption, false, admin.AllowRemoteHelp)
	notes, err := s.Load(args)
	if err != nil {
		return Config{}, notes, err
	}
	return c, notes, c.validate()
}

func (c Config) validate() error {
	switch {
	case !c.VNCEnabled:
		return errors.New("[vnc] enabled is false: this host serves no VNC consoles, so compute-agent has nothing to do; do not run it, or set enabled = true")
	case c.Host == "" || strings.Contains(c.Host, "/"):
		return fmt.Errorf("host %q must be non-empty and contain no '/'", c.Host)
	case len(c.EtcdEndpoints) == 0:
		return fmt.Errorf("etcd_endpoints is empty")
	case c.RegistrationTTL < time.Second:
		return fmt.Errorf("registration_ttl %v must be at least 1 second", c.RegistrationTTL)
	case c.ProxyClientAddress == "":
		return fmt.Errorf("server_proxyclient_address is empty")
	}
	if _, _, err := net.SplitHostPort(c.GRPCListen); err != nil {
		return fmt.Errorf("grpc_listen: %w", err)
	}
	if _, err := grpcclient.ParseEndpoints(tokencheck.Option, c.ConsoleAuthAddress); err != nil {
		return err
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			return fmt.Errorf("advertise_address: %w", err)
		}
	}
	if err := c.EtcdTLS.Check(); err != nil {
		return fmt.Errorf("etcd_key: %w", err)
	}
	if err := c.GRPCTLS.Check(); err != nil {
		return fmt.Errorf("grpc_key: %w", err)
	}
	if _, err := authn.ParseRoleSource(c.CertRoleSource); err != nil {
		return err
	}
	if err := c.Tracing.Validate(); err != nil {
		return err
	}
	return admin.Validate(c.AdminListen)
}

// checkPlaintext refuses, at start, gRPC without TLS off loopback: no
// caller would be known (every call but health is refused) and
// revocations would travel in plaintext.
func (c Config) checkPlaintext() error {
	if c.AdminListen != "" {
		if err := admin.CheckAddr(c.AdminListen, c.AllowPlaintext || c.AdminAllowRemote); err != nil {
			return err
		}
	}
	if c.GRPCTLS.Enabled() {
		return nil
	}
	if err := tlsconfig.CheckPlaintext("grpc_listen", c.GRPCListen, c.AllowPlaintext); err != nil {
		return err
	}
	return tlsconfig.CheckPlaintextEndpoints(tokencheck.Option, grpcclient.Entries(c.ConsoleAuthAddress), c.AllowPlaintext)
}

// advertiseFrom is the address consoleauth dials when advertise_address is
// not set: the listener's, with an unspecified host made myIP, or loopback
// when myIP is empty.
func advertiseFrom(listen net.Addr, myIP string) string {
	host, port, err := net.SplitHostPort(listen.String())
	if err != nil {
		return listen.String()
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = myIP
		if host == "" {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(host, port)
}

// unreachableVNC says why proxies on other hosts cannot reach this host's
// VNC servers, when server_listen is loopback but server_proxyclient_address
// is not; "" when the pair is consistent.
func (c Config) unreachableVNC() string {
	if isLoopback(c.ServerListen) && !isLoopback(c.ProxyClientAddress) {
		return fmt.Sprintf("[vnc] server_listen %s is a loopback address, but proxies are told to dial server_proxyclient_address %s: "+
			"VNC servers listening on loopback cannot be reached that way", c.ServerListen, c.ProxyClientAddress)
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
