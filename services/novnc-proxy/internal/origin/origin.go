// Package origin guards WebSocket upgrades against Cross-Site WebSocket
// Hijacking: a browser sends the Origin of the page that opens a WebSocket,
// and only pages of the proxy's own origin (novncproxy_base_url) or of
// origins the operator lists (allowed_origins) may open a console.
//
// An origin is compared whole: scheme, host (case-insensitively) and port,
// with the scheme's default port filled in (http 80, https 443), so a page
// on another port of the same host is another site. An allowed_origins entry
// is an origin ("https://portal.example.com:8443"), or, as Nova takes it, a
// host name ("portal.example.com", optionally with ":port"), which allows
// that host over http and https at that port (default: the scheme's).
// Besides, the Origin's scheme must be the one the client connected with:
// an https page must use wss, an http page ws.
//
// A request without Origin is allowed: browsers always send it, so its
// absence means a non-browser client, which cannot be tricked by a page (Nova
// and websockify do the same).
package origin

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ErrRefused wraps every refusal.
var ErrRefused = errors.New("origin refused")

// maxShown caps how much of a caller's Origin header an error repeats.
const maxShown = 64

// Policy is immutable and safe for concurrent use.
type Policy struct {
	origins map[string]bool // "scheme://host:port", lower case
}

// defaultPort is the port of scheme when an origin names none.
func defaultPort(scheme string) string {
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// key is the canonical form of an origin: lower-case scheme and host, port
// always present, IPv6 hosts bracketed.
func key(scheme, host, port string) string {
	if port == "" {
		port = defaultPort(scheme)
	}
	return strings.ToLower(scheme) + "://" + net.JoinHostPort(strings.ToLower(strings.Trim(host, "[]")), port)
}

// NewPolicy allows the origin of baseURL and each of allowed (see the
// package comment).
func NewPolicy(baseURL string, allowed []string) (*Policy, error) {
	p := &Policy{origins: map[string]bool{}}
	u, err := url.Parse(baseURL)
	if err != nil || u.Hostname() == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("novncproxy_base_url %q: want an absolute http or https URL with a host", baseURL)
	}
	p.origins[key(u.Scheme, u.Hostname(), u.Port())] = true
	for _, a := range allowed {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if strings.Contains(a, "://") {
			u, err := url.Parse(a)
			if err != nil || u.Hostname() == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
				return nil, fmt.Errorf("allowed_origins entry %q: want a host name or an http(s) origin such as https://portal.example.com:8443", a)
			}
			p.origins[key(u.Scheme, u.Hostname(), u.Port())] = true
			continue
		}
		host, port := a, ""
		if h, pt, err := net.SplitHostPort(a); err == nil {
			host, port = h, pt
		}
		if n, err := strconv.Atoi(port); port != "" && (err != nil || n < 1 || n > 65535) {
			return nil, fmt.Errorf("allowed_origins entry %q: bad port", a)
		}
		if host == "" || strings.ContainsAny(host, "/?#@ ") {
			return nil, fmt.Errorf("allowed_origins entry %q: want a host name or an http(s) origin", a)
		}
		p.origins[key("http", host, port)] = true
		p.origins[key("https", host, port)] = true
	}
	return p, nil
}

// Check returns nil if an upgrade whose Origin header is origin, arriving
// over scheme ("http" or "https", after trusted X-Forwarded-Proto), may
// proceed; otherwise an error wrapping ErrRefused that says why (repeating
// at most a short prefix of the header).
func (p *Policy) Check(origin, scheme string) error {
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Hostname() == "" || u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		strings.Trim(u.Path, "/") != "" || (!strings.EqualFold(u.Scheme, "http") && !strings.EqualFold(u.Scheme, "https")) {
		return fmt.Errorf("%w: origin header %q is not an http(s) origin", ErrRefused, shown(origin))
	}
	if !strings.EqualFold(u.Scheme, scheme) {
		return fmt.Errorf("%w: page scheme %s does not match connection scheme %s", ErrRefused, strings.ToLower(u.Scheme), scheme)
	}
	k := key(u.Scheme, u.Hostname(), u.Port())
	if !p.origins[k] {
		return fmt.Errorf("%w: %s is not this console proxy's origin", ErrRefused, shown(k))
	}
	return nil
}

// shown is s cut to maxShown bytes.
func shown(s string) string {
	if len(s) <= maxShown {
		return s
	}
	return s[:maxShown] + "..."
}
