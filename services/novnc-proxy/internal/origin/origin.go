// Package origin guards WebSocket upgrades against Cross-Site WebSocket
// Hijacking: a browser sends the Origin of the page that opens a WebSocket,
// and only pages served from the proxy's public host (novncproxy_base_url) or
// from hosts the operator lists (allowed_origins) may open a console.
//
// A request without Origin is allowed: browsers always send it, so its absence
// means a non-browser client, which cannot be tricked by a page (Nova and
// websockify do the same). Hosts are compared case-insensitively and without
// port; the Origin's scheme must match the scheme the client connected with
// (an https page must use wss, an http page ws).
package origin

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrRefused wraps every refusal.
var ErrRefused = errors.New("origin refused")

// Policy is immutable and safe for concurrent use.
type Policy struct {
	hosts map[string]bool
}

// NewPolicy allows the host of baseURL and each of allowed, which are host
// names ("console.example.com") or origins ("https://console.example.com:443",
// of which only the host counts).
func NewPolicy(baseURL string, allowed []string) (*Policy, error) {
	p := &Policy{hosts: map[string]bool{}}
	u, err := url.Parse(baseURL)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("novncproxy_base_url %q: want an absolute URL with a host", baseURL)
	}
	p.hosts[strings.ToLower(u.Hostname())] = true
	for _, a := range allowed {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host := a
		if strings.Contains(a, "://") {
			u, err := url.Parse(a)
			if err != nil || u.Hostname() == "" {
				return nil, fmt.Errorf("allowed_origins entry %q: want a host name or an origin", a)
			}
			host = u.Hostname()
		}
		p.hosts[strings.ToLower(strings.Trim(host, "[]"))] = true
	}
	return p, nil
}

// Check returns nil if an upgrade whose Origin header is origin, arriving
// over scheme ("http" or "https", after trusted X-Forwarded-Proto), may
// proceed; otherwise an error wrapping ErrRefused that says why.
func (p *Policy) Check(origin, scheme string) error {
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme == "" || u.Hostname() == "" {
		return fmt.Errorf("%w: origin header %q is not valid", ErrRefused, origin)
	}
	if !strings.EqualFold(u.Scheme, scheme) {
		return fmt.Errorf("%w: page scheme %s does not match connection scheme %s", ErrRefused, strings.ToLower(u.Scheme), scheme)
	}
	if !p.hosts[strings.ToLower(u.Hostname())] {
		return fmt.Errorf("%w: host %s is not this console proxy's", ErrRefused, u.Hostname())
	}
	return nil
}
