package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Config is the agent's settings, one field per flag.
type Config struct {
	GRPCListen         string
	AdvertiseAddress   string
	Host               string
	EtcdEndpoints      []string
	EtcdTLS            tlsconfig.Files
	GRPCTLS            tlsconfig.Files
	Driver             string
	InventoryFile      string
	LibvirtURI         string
	QMPSockets         string
	ProxyClientAddress string
	RegistrationTTL    time.Duration
	ConsoleAuthAddress string
	LogLevel           string
}

// loadConfig reads flags, environment and config file (pkg/config) and
// checks the result.
func loadConfig(args []string) (Config, error) {
	hostname, _ := os.Hostname()
	fs := flag.NewFlagSet("compute-agent", flag.ContinueOnError)
	var (
		c        Config
		etcd     string
		ttlSecs  int
		listenAt = fs.String("grpc_listen", "0.0.0.0:6092", "host:port the gRPC API listens on")
	)
	fs.StringVar(&c.AdvertiseAddress, "advertise_address", "", "host:port consoleauth dials to reach this agent (default: grpc_listen with 0.0.0.0 replaced by 127.0.0.1)")
	fs.StringVar(&c.Host, "host", hostname, "this compute host's name, as registered in etcd")
	fs.StringVar(&etcd, "etcd_endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.StringVar(&c.EtcdTLS.Cert, "etcd_cert", "", "client certificate (PEM) for etcd")
	fs.StringVar(&c.EtcdTLS.Key, "etcd_key", "", "client key (PEM) for etcd")
	fs.StringVar(&c.EtcdTLS.CA, "etcd_ca", "", "CA (PEM) that signed etcd's certificate")
	fs.StringVar(&c.GRPCTLS.Cert, "grpc_cert", "", "certificate (PEM) of the gRPC API, also used as client certificate to consoleauth")
	fs.StringVar(&c.GRPCTLS.Key, "grpc_key", "", "key (PEM) of grpc_cert")
	fs.StringVar(&c.GRPCTLS.CA, "grpc_ca", "", "CA (PEM) for mutual TLS: clients of the API and consoleauth's certificate")
	fs.StringVar(&c.Driver, "driver", "static", "where instances come from: static, libvirt or qmp")
	fs.StringVar(&c.InventoryFile, "inventory_file", "", "JSON inventory of the static driver")
	fs.StringVar(&c.LibvirtURI, "libvirt_uri", "qemu:///system", "libvirt connection URI of the libvirt driver (Nova's [libvirt] connection_uri)")
	fs.StringVar(&c.QMPSockets, "qmp_sockets", "", "instances of the qmp driver: comma-separated uuid=/path/to/qmp.sock")
	fs.StringVar(&c.ProxyClientAddress, "server_proxyclient_address", "127.0.0.1", "address proxies use to reach VNC servers on this host (Nova's name)")
	fs.IntVar(&ttlSecs, "registration_ttl", 10, "seconds a dead agent stays registered in etcd")
	fs.StringVar(&c.ConsoleAuthAddress, "consoleauth_address", "127.0.0.1:6090", "host:port of consoleauth's gRPC API, to revoke tokens")
	fs.StringVar(&c.LogLevel, "log_level", "info", "debug, info, warn or error")
	if err := config.Load(fs, args); err != nil {
		return Config{}, err
	}
	c.GRPCListen = *listenAt
	for _, e := range strings.Split(etcd, ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.EtcdEndpoints = append(c.EtcdEndpoints, e)
		}
	}
	c.RegistrationTTL = time.Duration(ttlSecs) * time.Second
	return c, c.validate()
}

func (c Config) validate() error {
	switch {
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
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			return fmt.Errorf("advertise_address: %w", err)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	return nil
}

// advertiseFrom is the address consoleauth dials when advertise_address is
// not set: the listener's, with an unspecified host made loopback.
func advertiseFrom(listen net.Addr) string {
	host, port, err := net.SplitHostPort(listen.String())
	if err != nil {
		return listen.String()
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log_level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})).With("service", "compute-agent"), nil
}
