package grpcclient

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        []Endpoint
	}{
		{"one address", "127.0.0.1:6090", []Endpoint{{"127.0.0.1", 6090}}},
		{"a list, spaces around commas", "10.0.0.1:6090, 10.0.0.2:6090 ,consoleauth.internal:6090",
			[]Endpoint{{"10.0.0.1", 6090}, {"10.0.0.2", 6090}, {"consoleauth.internal", 6090}}},
		{"IPv6 in brackets", "[2001:db8::1]:6090,[::1]:6091", []Endpoint{{"2001:db8::1", 6090}, {"::1", 6091}}},
		{"DNS names: case and final dot dropped", "ConsoleAuth.Example.:6090", []Endpoint{{"consoleauth.example", 6090}}},
		{"localhost", "localhost:6090", []Endpoint{{"localhost", 6090}}},
		{"underscore in a name", "_grpc.ca-1.internal:1", []Endpoint{{"_grpc.ca-1.internal", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEndpoints("consoleauth_address", tc.value)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseEndpoints(%q): got %v, %v; want %v", tc.value, got, err, tc.want)
			}
		})
	}
}

func TestParseEndpointsErrorsNameTheEntry(t *testing.T) {
	for _, tc := range []struct {
		name, value, want string
	}{
		{"empty", "", "consoleauth_address is empty: want host:port"},
		{"blank", "  ", "consoleauth_address is empty"},
		{"empty entry in the middle", "a:1,,b:2", "consoleauth_address: entry 2 of 3 is empty"},
		{"trailing comma", "a:1,", "consoleauth_address: entry 2 of 2 is empty"},
		{"IPv6 without brackets", "a:1,2001:db8::1:6090", `entry "2001:db8::1:6090": want host:port, with an IPv6 address in brackets`},
		{"no port", "consoleauth", `entry "consoleauth": no port`},
		{"no host", ":6090", `entry ":6090": no host`},
		{"port 0", "a:0", `entry "a:0": port 0 out of range (1 to 65535)`},
		{"port too large", "a:1,b:65536", `entry "b:65536": port 65536 out of range`},
		{"named port", "a:grpc", `entry "a:grpc": port "grpc" is not a number`},
		{"a URL", "dns:///consoleauth:6090", `entry "dns:///consoleauth:6090": want host:port, not a URL`},
		{"a host that is no name", "console/auth:6090", `entry "console/auth:6090": host "console/auth" is neither an IP address nor a DNS name`},
		{"label starting with a hyphen", "-a.example:1", `host "-a.example" is neither`},
		{"listed twice", "a:1, a:1", `entry "a:1" is listed twice`},
		{"IPv6 zone", "[fe80::1%eth0]:6090", `an IPv6 zone (%eth0) cannot be checked against a certificate`},
		{"long entry cut short", strings.Repeat("x", 300), `entry "` + strings.Repeat("x", 80) + `": no port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEndpoints("consoleauth_address", tc.value)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseEndpoints(%.40q): got %v, %v; want an error with %q", tc.value, got, err, tc.want)
			}
		})
	}
}
