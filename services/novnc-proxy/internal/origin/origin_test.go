package origin

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	p, err := NewPolicy("https://Console.Example.com:6080/vnc_lite.html",
		[]string{"dash.example.com", "https://[2001:db8::1]:443", "ops.example.com:8443", "http://lab.example.com:8080", " "})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, origin, scheme string
		ok                   bool
	}{
		{"no origin", "", "http", true},
		{"base URL origin", "https://console.example.com:6080", "https", true},
		{"base URL host, other case", "https://CONSOLE.example.COM:6080", "https", true},
		{"base URL host, another port", "https://console.example.com:8443", "https", false},
		{"base URL host, default port", "https://console.example.com", "https", false},
		{"allowed host name, https at 443", "https://dash.example.com", "https", true},
		{"allowed host name, 443 spelt out", "https://dash.example.com:443", "https", true},
		{"allowed host name, http at 80", "http://dash.example.com", "http", true},
		{"allowed host name, another port", "https://dash.example.com:8443", "https", false},
		{"allowed host:port", "https://ops.example.com:8443", "https", true},
		{"allowed host:port, default port", "https://ops.example.com", "https", false},
		{"allowed origin", "http://lab.example.com:8080", "http", true},
		{"allowed origin, other scheme", "https://lab.example.com:8080", "https", false},
		{"allowed IPv6 origin", "https://[2001:db8::1]", "https", true},
		{"other host", "https://evil.example", "https", false},
		{"suffix of ours", "https://console.example.com.evil.example:6080", "https", false},
		{"https page over ws", "https://dash.example.com", "http", false},
		{"http page over wss", "http://dash.example.com", "https", false},
		{"null", "null", "https", false},
		{"garbage", "::::", "https", false},
		{"a path is not an origin", "https://dash.example.com/page", "https", false},
		{"user info", "https://u@dash.example.com", "https", false},
		{"another scheme", "ftp://dash.example.com", "https", false},
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

func TestRefusalRepeatsOnlyAShortPrefix(t *testing.T) {
	p, err := NewPolicy("https://console.example.com/", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, origin := range []string{"https://" + strings.Repeat("a", 60000) + ".example", "x" + strings.Repeat("%", 60000)} {
		err := p.Check(origin, "https")
		if err == nil || len(err.Error()) > 200 {
			t.Errorf("a %d-byte Origin: got %d bytes of error, want a refusal of at most 200", len(origin), len(err.Error()))
		}
	}
}

func TestNewPolicyRefusesBadConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name, base string
		allowed    []string
	}{
		{"relative base URL", "/vnc_lite.html", nil},
		{"base URL of another scheme", "ftp://console.example.com/", nil},
		{"allowed origin without host", "http://a/", []string{"https://"}},
		{"allowed origin with a path", "http://a/", []string{"https://b.example/page"}},
		{"allowed host with a bad port", "http://a/", []string{"b.example:99999"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewPolicy(tc.base, tc.allowed); err == nil {
				t.Fatal("got nil, want an error")
			}
		})
	}
}
