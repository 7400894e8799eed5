package config

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
)

// Notes is what Load has to say once the service has a logger.
type Notes struct {
	// Files are the files read, in order.
	Files []string
	// Ignored counts the assignments that are not this service's
	// (options of other services, of Nova services vncgate does not
	// replace, of sections it does not read).
	Ignored int
	// IgnoredSections are the sections the service read nothing from.
	IgnoredSections []string
	// Unsupported lists the Nova options vncgate does not implement that
	// the files set, with where and why.
	Unsupported []string
	// Deprecated lists old option names the files used.
	Deprecated []string
}

// Log writes the notes: one debug line summing up what was read and
// ignored, and a warning for unsupported or deprecated options.
func (n Notes) Log(log *slog.Logger) {
	if len(n.Files) > 0 {
		log.Debug("configuration files read", "files", n.Files, "ignored_options", n.Ignored,
			"ignored_sections", n.IgnoredSections)
	}
	if len(n.Unsupported) > 0 {
		log.Warn("nova.conf options vncgate does not implement are ignored", "options", n.Unsupported)
	}
	if len(n.Deprecated) > 0 {
		log.Warn("deprecated option names in use", "options", n.Deprecated)
	}
}

// builtin is the value of [DEFAULT] my_ip and host when no file sets
// them: what Nova would use by default.
func builtin(k key) (string, bool) {
	if k.section != SectionDefault {
		return "", false
	}
	switch k.name {
	case "my_ip":
		return MyIP(), true
	case "host":
		h, err := os.Hostname()
		return h, err == nil
	}
	return "", false
}

var myIP = sync.OnceValue(func() string {
	// As oslo.utils' get_my_ipv4: the source address of a route to a
	// public address. Connecting a UDP socket sends nothing.
	c, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
})

// MyIP is Nova's default my_ip: this host's IPv4 address on its default
// route, 127.0.0.1 when there is none.
func MyIP() string { return myIP() }

// ListenAddr is the network and address a service listens on for host and
// port, with Nova's [DEFAULT] source_is_ipv6: when set, a host name is
// resolved to its IPv6 addresses ("tcp6") instead of its IPv4 ones, as
// websockify prefers IPv6 then. A wildcard (0.0.0.0, "::" or empty)
// already accepts IPv4 and IPv6 in Go, and an address literal is itself.
func ListenAddr(host string, port int, sourceIsIPv6 bool) (network, address string) {
	network = "tcp"
	if sourceIsIPv6 && host != "" && net.ParseIP(host) == nil {
		network = "tcp6"
	}
	return network, net.JoinHostPort(host, strconv.Itoa(port))
}
