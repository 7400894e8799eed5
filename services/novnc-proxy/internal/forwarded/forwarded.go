// Package forwarded tells the scheme and client address of a request,
// believing X-Forwarded-Proto and X-Forwarded-For only when the request came
// from one of the operator's trusted proxies (trusted_proxies). Anybody else
// could set those headers to dodge the failed-token limit or the origin check.
package forwarded

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/vncgate/vncgate/pkg/edge"
)

// Trust lists the proxies whose forwarding headers are believed
// (trusted_proxies, parsed by package edge). The zero value trusts nobody.
// It is immutable and safe for concurrent use.
type Trust struct {
	edge.Trust
}

// ParseTrust reads addresses ("10.0.0.5") and networks ("10.0.0.0/8").
func ParseTrust(list []string) (Trust, error) {
	t, err := edge.ParseTrust(list)
	return Trust{t}, err
}

func (t Trust) trusts(a netip.Addr) bool { return t.Contains(a) }

// Peer is the address of the TCP peer of r.
func Peer(r *http.Request) netip.Addr { return peer(r) }

// peer is the address of the TCP peer of r.
func peer(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// ClientIP is the address of the client: the TCP peer, or when the peer is a
// trusted proxy, the right-most X-Forwarded-For address that is not one.
func (t Trust) ClientIP(r *http.Request) string {
	p := peer(r)
	if !p.IsValid() {
		return r.RemoteAddr
	}
	if !t.trusts(p) {
		return p.String()
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	client := p
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // garbage: stop believing the chain here
		}
		client = a.Unmap()
		if !t.trusts(client) {
			break
		}
	}
	return client.String()
}

// Scheme is "https" when the request came over TLS, or from a trusted proxy
// saying X-Forwarded-Proto: https; otherwise "http".
func (t Trust) Scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if t.trusts(peer(r)) {
		// The first value is the one the client-facing proxy set.
		proto, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ",")
		switch strings.ToLower(strings.TrimSpace(proto)) {
		case "https", "wss":
			return "https"
		}
	}
	return "http"
}
