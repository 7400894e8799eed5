package libvirt

import (
	"encoding/xml"
	"fmt"
	"net"
	"strconv"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// domainXML is the part of libvirt's domain XML the driver reads.
type domainXML struct {
	Graphics []graphicsXML `xml:"devices>graphics"`
}

// graphicsXML is one <graphics> device, e.g.
//
//	<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
//	  <listen type='address' address='127.0.0.1'/>
//	</graphics>
type graphicsXML struct {
	Type    string      `xml:"type,attr"`
	Port    string      `xml:"port,attr"`
	Listen  string      `xml:"listen,attr"`
	Socket  string      `xml:"socket,attr"`
	Listens []listenXML `xml:"listen"`
}

type listenXML struct {
	Type    string `xml:"type,attr"`
	Address string `xml:"address,attr"`
}

// vncGraphics is where a domain's VNC server listens.
type vncGraphics struct {
	Port int32
	// Listen is the listen address, empty when libvirt does not say.
	Listen string
}

// parseVNC finds the first VNC graphics device of a live domain XML. A
// domain without one, or whose VNC server listens only on a unix socket,
// has no console (driver.ErrNoConsole); a port that is not assigned yet
// (autoport before start: port='-1') means driver.ErrNotRunning.
func parseVNC(desc string) (vncGraphics, error) {
	var dom domainXML
	if err := xml.Unmarshal([]byte(desc), &dom); err != nil {
		return vncGraphics{}, fmt.Errorf("parse domain xml: %w", err)
	}
	for _, g := range dom.Graphics {
		if g.Type != "vnc" {
			continue
		}
		listen := g.Listen
		tcp := g.Socket == "" && len(g.Listens) == 0
		for _, l := range g.Listens {
			switch l.Type {
			case "address", "network":
				tcp = true
				if listen == "" {
					listen = l.Address
				}
			case "":
				tcp = true
			}
		}
		if !tcp {
			return vncGraphics{}, fmt.Errorf("%w: vnc listens on a unix socket or nowhere", driver.ErrNoConsole)
		}
		port, err := strconv.ParseInt(g.Port, 10, 32)
		if err != nil || port <= 0 || port > 65535 {
			return vncGraphics{}, fmt.Errorf("%w: vnc port %q not assigned", driver.ErrNotRunning, g.Port)
		}
		return vncGraphics{Port: int32(port), Listen: listen}, nil
	}
	return vncGraphics{}, fmt.Errorf("%w: no vnc graphics in the domain", driver.ErrNoConsole)
}

// consoleHost is the host the proxies dial: server_proxyclient_address when
// configured, else the VNC listen address, else (unset or a wildcard)
// 127.0.0.1.
func consoleHost(proxyClientAddress, listen string) string {
	if proxyClientAddress != "" {
		return proxyClientAddress
	}
	if ip := net.ParseIP(listen); listen == "" || (ip != nil && ip.IsUnspecified()) {
		return "127.0.0.1"
	}
	return listen
}
