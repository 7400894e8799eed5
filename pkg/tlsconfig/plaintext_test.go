package tlsconfig

import "testing"

func TestCheckPlaintext(t *testing.T) {
	for _, c := range []struct {
		addr    string
		allowed bool
		ok      bool
	}{
		{"127.0.0.1:6090", false, true},
		{"127.9.9.9:1", false, true},
		{"[::1]:6090", false, true},
		{"localhost:6090", false, true},
		{"0.0.0.0:6090", false, false},
		{":6090", false, false},
		{"[::]:6090", false, false},
		{"10.0.0.5:6090", false, false},
		{"consoleauth.example:6090", false, false},
		{"10.0.0.5:6090", true, true},
	} {
		err := CheckPlaintext("grpc_listen", c.addr, c.allowed)
		if (err == nil) != c.ok {
			t.Errorf("CheckPlaintext(%q, allowed=%v) = %v, want ok=%v", c.addr, c.allowed, err, c.ok)
		}
	}
}
