package libvirt

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
)

var errBadUUID = errors.New("not a uuid")

// parseUUID reads a UUID in its usual text form (8-4-4-4-12 hex digits, any
// case; the dashes are optional, as libvirt accepts).
func parseUUID(s string) (golibvirt.UUID, error) {
	var u golibvirt.UUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 2*len(u) {
		return u, fmt.Errorf("%w: %q", errBadUUID, s)
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("%w: %q", errBadUUID, s)
	}
	return u, nil
}

// formatUUID writes u in the canonical lower-case 8-4-4-4-12 form, the form
// instance UUIDs take in etcd.
func formatUUID(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
