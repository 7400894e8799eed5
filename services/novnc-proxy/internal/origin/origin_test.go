package origin

import (
	"errors"
	"testing"
)

func TestCheck(t *testing.T) {
	p, err := NewPolicy("https://Console.Example.com:6080/vnc_lite.html", []string{"dash.example.com", "https://[2001:db8::1]:443", " "})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, origin, scheme string
		ok                   bool
	}{
		{"no origin", "", "http", true},
		{"base URL host", "https://console.example.com", "https", true},
		{"base URL host, other case and port", "https://CONSOLE.example.COM:8443", "https", true},
		{"allowed host", "https://dash.example.com", "https", true},
		{"allowed IPv6 origin", "https://[2001:db8::1]", "https", true},
		{"other host", "https://evil.example", "https", false},
		{"suffix of ours", "https://console.example.com.evil.example", "https", false},
		{"https page over ws", "https://console.example.com", "http", false},
		{"http page over wss", "http://console.example.com", "https", false},
		{"null", "null", "https", false},
		{"garbage", "::::", "https", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Check(tc.origin, tc.scheme)
			if (err == nil) != tc.ok {
				t.Fatalf("got %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrRefused) {
				t.Errorf("got %v, want it to wrap ErrRefused", err)
			}
		})
	}
}

func TestNewPolicyRefusesBadConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name, base string
		allowed    []string
	}{
		{"relative base URL", "/vnc_lite.html", nil},
		{"allowed origin without host", "http://a/", []string{"https://"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewPolicy(tc.base, tc.allowed); err == nil {
				t.Fatal("got nil, want an error")
			}
		})
	}
}
