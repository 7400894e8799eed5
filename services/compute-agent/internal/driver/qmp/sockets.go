package qmp

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Instance is one QEMU process: the instance UUID and the path of its QMP
// monitor socket.
type Instance struct {
	UUID   string
	Socket string
}

// ParseSockets parses the qmp_sockets option: comma-separated
// UUID=SOCKET_PATH pairs, e.g.
//
//	6f1c7f8e-3b8a-4b5e-9f7e-2a1d3c4b5a69=/run/qemu/6f1c7f8e.qmp,0b7e…=/run/qemu/0b7e….qmp
//
// Spaces around items are ignored, UUIDs are lower-cased, paths must be
// absolute, and a UUID may appear once.
func ParseSockets(s string) ([]Instance, error) {
	var out []Instance
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		uuid, path, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("qmp_sockets: %q is not uuid=path", item)
		}
		uuid, err := normalizeUUID(strings.TrimSpace(uuid))
		if err != nil {
			return nil, fmt.Errorf("qmp_sockets: %w", err)
		}
		path = strings.TrimSpace(path)
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("qmp_sockets: socket path %q of %s is not absolute", path, uuid)
		}
		if seen[uuid] {
			return nil, fmt.Errorf("qmp_sockets: %s appears twice", uuid)
		}
		seen[uuid] = true
		out = append(out, Instance{UUID: uuid, Socket: path})
	}
	return out, nil
}

// normalizeUUID checks the 8-4-4-4-12 hex form and lower-cases it.
func normalizeUUID(s string) (string, error) {
	if len(s) != 36 {
		return "", fmt.Errorf("%q is not a uuid", s)
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return "", fmt.Errorf("%q is not a uuid", s)
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return "", fmt.Errorf("%q is not a uuid", s)
			}
		}
	}
	return strings.ToLower(s), nil
}
