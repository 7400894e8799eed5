package forwarded

import (
	"crypto/tls"
	"net/http"
	"testing"
)

func TestClientIPAndScheme(t *testing.T) {
	trust, err := ParseTrust([]string{"10.0.0.0/8", "192.0.2.7", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		remote     string
		xff, proto string
		tls        bool
		wantIP     string
		wantScheme string
	}{
		{"direct client", "198.51.100.1:5000", "", "", false, "198.51.100.1", "http"},
		{"direct client lies", "198.51.100.1:5000", "203.0.113.9", "https", false, "198.51.100.1", "http"},
		{"direct TLS", "198.51.100.1:5000", "", "", true, "198.51.100.1", "https"},
		{"through a trusted proxy", "10.1.2.3:5000", "203.0.113.9", "https", false, "203.0.113.9", "https"},
		{"through two trusted proxies", "10.1.2.3:5000", "203.0.113.9, 192.0.2.7", "https,http", false, "203.0.113.9", "https"},
		{"client-supplied hop is not believed", "10.1.2.3:5000", "1.2.3.4, 203.0.113.9", "", false, "203.0.113.9", "http"},
		{"garbage hop stops the walk", "10.1.2.3:5000", "203.0.113.9, junk", "", false, "10.1.2.3", "http"},
		{"trusted proxy without header", "10.1.2.3:5000", "", "", false, "10.1.2.3", "http"},
		{"IPv6 loopback proxy", "[::1]:5000", "203.0.113.9", "wss", false, "203.0.113.9", "https"},
		{"IPv4-mapped peer", "[::ffff:10.0.0.1]:5000", "203.0.113.9", "", false, "203.0.113.9", "http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tc.remote, Header: http.Header{}}
			if tc.xff != "" {
				r.Header.Set("X-Forwarded-For", tc.xff)
			}
			if tc.proto != "" {
				r.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			if got := trust.ClientIP(r); got != tc.wantIP {
				t.Errorf("client IP: got %s, want %s", got, tc.wantIP)
			}
			if got := trust.Scheme(r); got != tc.wantScheme {
				t.Errorf("scheme: got %s, want %s", got, tc.wantScheme)
			}
		})
	}
}

func TestParseTrustRefusesGarbage(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "not-an-ip", "10.0.0.1/"} {
		if _, err := ParseTrust([]string{bad}); err == nil {
			t.Errorf("%q: got nil, want an error", bad)
		}
	}
}
