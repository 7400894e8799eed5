package grpcclient

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Endpoint is one entry of an address option: a host (an IP address or a
// DNS name, which may resolve to several addresses) and a port.
type Endpoint struct {
	Host string
	Port int
}

// String is host:port, with an IPv6 address in brackets.
func (e Endpoint) String() string { return net.JoinHostPort(e.Host, strconv.Itoa(e.Port)) }

// IsIP reports whether Host is an IP address (no DNS lookup needed).
func (e Endpoint) IsIP() bool {
	_, err := netip.ParseAddr(e.Host)
	return err == nil
}

// ParseEndpoints reads an address option's value (option names it in
// errors): host:port, or a comma-separated list of them, spaces allowed
// around commas. Each error names the entry at fault: an empty entry, a
// missing or out-of-range port, an IPv6 address without brackets ("too
// many colons"), a host that is neither an IP address nor a DNS name, or
// an entry listed twice.
func ParseEndpoints(option, value string) ([]Endpoint, error) {
	if strings.TrimSpace(value) == "" {
		return nil, fmt.Errorf("%s is empty: want host:port, or a comma-separated list of them", option)
	}
	entries := Entries(value)
	eps := make([]Endpoint, 0, len(entries))
	seen := make(map[Endpoint]bool, len(entries))
	for i, entry := range entries {
		if entry == "" {
			return nil, fmt.Errorf("%s: entry %d of %d is empty (a stray comma?)", option, i+1, len(entries))
		}
		ep, err := parseEndpoint(entry)
		if err != nil {
			return nil, fmt.Errorf("%s: entry %.80q: %w", option, entry, err)
		}
		if seen[ep] {
			return nil, fmt.Errorf("%s: entry %.80q is listed twice", option, entry)
		}
		seen[ep] = true
		eps = append(eps, ep)
	}
	return eps, nil
}

// Entries splits an address option's value at its commas, each entry
// trimmed: host:port strings for checks that take them (ParseEndpoints
// says whether they are valid).
func Entries(value string) []string {
	entries := strings.Split(value, ",")
	for i, e := range entries {
		entries[i] = strings.TrimSpace(e)
	}
	return entries
}

func parseEndpoint(entry string) (Endpoint, error) {
	if strings.Contains(entry, "://") {
		return Endpoint{}, fmt.Errorf("want host:port, not a URL or a gRPC target (DNS names are resolved, and again later, without dns:///)")
	}
	host, port, err := net.SplitHostPort(entry)
	if err != nil {
		if strings.Count(entry, ":") > 1 && !strings.HasPrefix(entry, "[") {
			return Endpoint{}, fmt.Errorf("want host:port, with an IPv6 address in brackets ([2001:db8::1]:6090)")
		}
		if !strings.Contains(entry, ":") {
			return Endpoint{}, fmt.Errorf("no port: want host:port")
		}
		return Endpoint{}, fmt.Errorf("want host:port: %w", err)
	}
	if host == "" {
		return Endpoint{}, fmt.Errorf("no host: want host:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return Endpoint{}, fmt.Errorf("port %.20q is not a number", port)
	}
	if n < 1 || n > 65535 {
		return Endpoint{}, fmt.Errorf("port %d out of range (1 to 65535)", n)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Endpoint{}, fmt.Errorf("an IPv6 zone (%%%s) cannot be checked against a certificate: use a global address or a DNS name", ip.Zone())
		}
		return Endpoint{Host: ip.String(), Port: n}, nil
	}
	if !isDNSName(host) {
		return Endpoint{}, fmt.Errorf("host %.80q is neither an IP address nor a DNS name", host)
	}
	return Endpoint{Host: strings.ToLower(strings.TrimSuffix(host, ".")), Port: n}, nil
}

// isDNSName reports whether name is a syntactically valid host name:
// labels of letters, digits, hyphens (not at either end) and underscores,
// 1 to 63 bytes each, 253 in all, an optional final dot.
func isDNSName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}
