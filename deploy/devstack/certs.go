package devstack

import (
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/certs"
)

// certValidity is how long the throwaway certificates live: long enough for
// a `make run` session, short enough that a leaked one soon stops working.
const certValidity = 24 * time.Hour

// writeCerts writes into dir a throwaway CA (see testkit/certs) and one
// certificate signed by it for localhost, 127.0.0.1, ::1 and host, usable
// both as server and as client certificate (every service presents the same
// one, as server and as mTLS client). The CA's key is not kept.
func writeCerts(dir, host string) (tlsconfig.Files, error) {
	ca, err := certs.NewCA("vncgate devstack CA", certValidity)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	f, err := ca.WriteFiles(dir, "localhost", "127.0.0.1", "::1", host)
	if err != nil {
		return tlsconfig.Files{}, err
	}
	return tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}, nil
}
