package tlsconfig

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
)

// CheckPlaintext refuses a listener or a link that would carry plaintext
// off loopback: what name calls addr ("grpc_listen", "consoleauth_address")
// may only be plaintext on a loopback address, unless the operator set
// [vncgate] allow_plaintext (allowed). A host name counts as off loopback
// unless it is "localhost"; an empty host (all interfaces) is off loopback.
func CheckPlaintext(name, addr string, allowed bool) error {
	if allowed || IsLoopback(addr) {
		return nil
	}
	return fmt.Errorf("%s %s: plaintext off loopback; configure TLS for it, or set [vncgate] allow_plaintext = true (e.g. behind a TLS-terminating load balancer on a private network)", name, addr)
}

// CheckPlaintextEndpoints is CheckPlaintext for a list of endpoints, each
// host:port or a URL (etcd's "http://host:port").
func CheckPlaintextEndpoints(name string, endpoints []string, allowed bool) error {
	for _, ep := range endpoints {
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			ep = u.Host
		}
		if err := CheckPlaintext(name, ep, allowed); err != nil {
			return err
		}
	}
	return nil
}

// IsLoopback reports whether addr (host:port or a bare host) names only
// loopback: 127.0.0.0/8, ::1 or localhost.
func IsLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
