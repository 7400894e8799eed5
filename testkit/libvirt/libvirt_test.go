package libvirt

import (
	"encoding/xml"
	"regexp"
	"strings"
	"testing"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewGuest(t *testing.T) {
	a, b := NewGuest(t, "vncgate-test-"), NewGuest(t, "vncgate-test-")
	if !uuidV4.MatchString(a.UUID) {
		t.Errorf("got UUID %q, want a canonical version 4 UUID", a.UUID)
	}
	if want := "vncgate-test-" + a.UUID[:8]; a.Name != want {
		t.Errorf("got name %q, want %q", a.Name, want)
	}
	if a.UUID == b.UUID {
		t.Errorf("two guests got the same UUID %s", a.UUID)
	}
}

// TestGuestXML checks the domain is well-formed XML with the guest's name,
// UUID and the graphics asked for.
func TestGuestXML(t *testing.T) {
	g := Guest{Name: "vncgate-test-1", UUID: "6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69"}
	tests := []struct {
		name     string
		graphics string
		want     []graphics
	}{
		{"autoport", VNCAutoport, []graphics{{Type: "vnc", Autoport: "yes", Listen: "127.0.0.1"}}},
		{"fixed port", VNCAt(20123), []graphics{{Type: "vnc", Port: "20123", Autoport: "no", Listen: "127.0.0.1"}}},
		{"no graphics", NoGraphics, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d domain
			if err := xml.NewDecoder(strings.NewReader(g.XML(tt.graphics))).Decode(&d); err != nil {
				t.Fatalf("domain XML: %v", err)
			}
			if d.Type != "qemu" || d.Name != g.Name || d.UUID != g.UUID || d.Memory != "64" {
				t.Errorf("got domain %+v, want a 64 MiB qemu (TCG) domain named %s with UUID %s", d, g.Name, g.UUID)
			}
			if len(d.Graphics) != len(tt.want) || (len(tt.want) > 0 && d.Graphics[0] != tt.want[0]) {
				t.Errorf("got graphics %+v, want %+v", d.Graphics, tt.want)
			}
		})
	}
}

type domain struct {
	Type     string     `xml:"type,attr"`
	Name     string     `xml:"name"`
	UUID     string     `xml:"uuid"`
	Memory   string     `xml:"memory"`
	Graphics []graphics `xml:"devices>graphics"`
}

type graphics struct {
	Type     string `xml:"type,attr"`
	Port     string `xml:"port,attr"`
	Autoport string `xml:"autoport,attr"`
	Listen   string `xml:"listen,attr"`
}
