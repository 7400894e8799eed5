package edge

import (
	"fmt"
	"net/netip"
	"strings"
)

// Trust lists the operator's load balancers and reverse proxies
// (trusted_proxies): the only peers whose word on the client's address (a
// PROXY header, X-Forwarded-For) is believed. Anybody else could claim any
// address to dodge a limit. The zero value trusts nobody; a Trust is
// immutable and safe for concurrent use.
type Trust struct {
	prefixes []netip.Prefix
}

// ParseTrust reads addresses ("10.0.0.5") and networks ("10.0.0.0/8").
func ParseTrust(list []string) (Trust, error) {
	var t Trust
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return Trust{}, fmt.Errorf("trusted_proxies entry %q: %w", s, err)
			}
			t.prefixes = append(t.prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Trust{}, fmt.Errorf("trusted_proxies entry %q: %w", s, err)
		}
		a = a.Unmap()
		t.prefixes = append(t.prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	return t, nil
}

// Contains reports whether a is one of the trusted proxies.
func (t Trust) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// IsZero reports whether t trusts nobody.
func (t Trust) IsZero() bool { return len(t.prefixes) == 0 }
