package registry

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestLocationConsoleMismatch(t *testing.T) {
	c := LocationConsole{Host: "10.0.0.5", Port: 5901}
	for _, tc := range []struct {
		name, host string
		port       int32
		want       string // "" is a match; else a part of the reason
	}{
		{"same", "10.0.0.5", 5901, ""},
		{"IPv4-mapped IPv6 is the same address", "::ffff:10.0.0.5", 5901, ""},
		{"other port", "10.0.0.5", 5902, "port 5902 is not the instance's console (it is now 5901)"},
		{"other host", "10.0.0.6", 5901, `host "10.0.0.6" is not the instance's console (it is now "10.0.0.5")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.Mismatch(tc.host, tc.port)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("Mismatch(%q, %d): got %q, want %q", tc.host, tc.port, got, tc.want)
			}
		})
	}
	if got := (LocationConsole{Host: "Compute-1.example", Port: 1}).Mismatch("compute-1.EXAMPLE", 1); got != "" {
		t.Errorf("host names differing in case: got %q, want a match", got)
	}
}

// A claim written before consoles were published reads as one that
// vouches for nothing (no lease, no console), and a new one keeps its
// fields.
func TestLocationJSON(t *testing.T) {
	var old Location
	if err := json.Unmarshal([]byte(`{"compute_host":"c1"}`), &old); err != nil {
		t.Fatal(err)
	}
	if old.ComputeHost != "c1" || old.Lease != 0 || old.Console != nil || old.NoConsole != "" {
		t.Errorf("old claim: got %+v, want only its host", old)
	}
	loc := Location{ComputeHost: "c1", Lease: 7, Console: &LocationConsole{Host: "10.0.0.5", Port: 5901}}
	b, err := json.Marshal(loc)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"compute_host":"c1","lease":7,"console":{"host":"10.0.0.5","port":5901}}`; string(b) != want {
		t.Errorf("claim: got %s, want %s", b, want)
	}
}
