// Package freeport picks loopback ports for servers that must know their
// address before they listen (etcd advertises its URLs).
package freeport

import (
	"fmt"
	"net"
)

// Resolve returns addr (host:port) with port 0 replaced by a port that is
// free now; another port is left as it is. Something else may take the port
// before the caller listens on it, which on loopback in tests is rare.
func Resolve(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
