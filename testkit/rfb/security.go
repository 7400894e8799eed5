package rfb

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Security types and VeNCrypt subtypes the server side speaks.
const (
	securityVeNCrypt = 19
	vencryptX509None = 260
)

// VeNCrypt makes a server offer VeNCrypt the way QEMU does with
// `-object tls-creds-x509,...,endpoint=server` and `-vnc ...,tls-creds=`:
// security types [VeNCrypt] only (never None), VeNCrypt 0.2, subtypes
// [X509None] only, a TLS handshake, then the SecurityResult and everything
// after it inside TLS.
type VeNCrypt struct {
	// TLS is the server's TLS configuration: its certificate, and the CAs
	// client certificates must chain to (ClientCAs) for RequireClientCert.
	TLS *tls.Config
	// RequireClientCert is QEMU's verify-peer=yes: the TLS handshake
	// completes whatever the client presents, then a client without a
	// certificate chaining to TLS.ClientCAs is disconnected without a word
	// or an alert, so it sees EOF on its first read inside TLS.
	RequireClientCert bool
}

// AcceptSecurity runs the server side of the RFB handshake on c up to the
// end of the security phase: it offers RFB 3.8 (3.7 and 3.3 are accepted,
// any other 3.x is 3.3), then security type None, or with v VeNCrypt as
// QEMU does (3.3 clients are refused: VeNCrypt needs a type list). It
// returns the conn the session goes on with, TLS over c after VeNCrypt, on
// which the client's ClientInit comes next, and the version agreed ("3.8",
// "3.7" or "3.3"). It reads exactly what the protocol says and sets no
// deadline; it does not close c on failure.
func AcceptSecurity(c net.Conn, v *VeNCrypt) (net.Conn, string, error) {
	if _, err := io.WriteString(c, "RFB 003.008\n"); err != nil {
		return nil, "", err
	}
	var b [12]byte
	if _, err := io.ReadFull(c, b[:12]); err != nil {
		return nil, "", fmt.Errorf("read client version: %w", err)
	}
	major, minor, err := parseVersion(b[:12])
	if err != nil {
		return nil, "", err
	}
	if major != 3 {
		return nil, "", fmt.Errorf("client protocol version %d.%d not supported", major, minor)
	}
	switch {
	case minor >= 8:
		minor = 8
	case minor == 7:
	default:
		minor = 3 // RFC 6143 7.1.1: other 3.x versions are 3.3
	}
	version := fmt.Sprintf("3.%d", minor)
	offered := byte(securityNone)
	if v != nil {
		offered = securityVeNCrypt
	}
	if minor == 3 {
		if v != nil {
			const reason = "VeNCrypt needs RFB 3.7 or later"
			msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, securityInvalid), uint32(len(reason)))
			_, _ = c.Write(append(msg, reason...))
			return nil, "", errors.New("RFB 3.3 client, VeNCrypt needs 3.7 or later")
		}
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, securityNone)); err != nil {
			return nil, "", err
		}
		return c, version, nil
	}
	if _, err := c.Write([]byte{1, offered}); err != nil {
		return nil, "", err
	}
	if _, err := io.ReadFull(c, b[:1]); err != nil {
		return nil, "", fmt.Errorf("read security type: %w", err)
	}
	if b[0] != offered {
		if minor == 8 {
			reason := fmt.Sprintf("only security type %d is offered", offered)
			msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 1), uint32(len(reason)))
			_, _ = c.Write(append(msg, reason...))
		}
		return nil, "", fmt.Errorf("client chose security type %d, offered only %d", b[0], offered)
	}
	if v == nil {
		if minor == 8 {
			if _, err := c.Write([]byte{0, 0, 0, 0}); err != nil {
				return nil, "", err
			}
		}
		return c, version, nil
	}
	tc, err := acceptVeNCrypt(c, v)
	if err != nil {
		return nil, "", err
	}
	// As QEMU: the SecurityResult follows X509None whatever the version.
	if _, err := tc.Write([]byte{0, 0, 0, 0}); err != nil {
		return nil, "", err
	}
	return tc, version, nil
}

// acceptVeNCrypt runs VeNCrypt 0.2 with subtype X509None and the TLS
// handshake on c, and checks the client's certificate when v requires one.
func acceptVeNCrypt(c net.Conn, v *VeNCrypt) (*tls.Conn, error) {
	if v.TLS == nil {
		return nil, errors.New("VeNCrypt without a TLS configuration")
	}
	var b [4]byte
	if _, err := c.Write([]byte{0, 2}); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return nil, fmt.Errorf("read VeNCrypt version: %w", err)
	}
	if b[0] != 0 || b[1] != 2 {
		_, _ = c.Write([]byte{0xff})
		return nil, fmt.Errorf("client chose VeNCrypt %d.%d, offered 0.2", b[0], b[1])
	}
	msg := []byte{0, 1} // ack, one subtype
	if _, err := c.Write(binary.BigEndian.AppendUint32(msg, vencryptX509None)); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, b[:4]); err != nil {
		return nil, fmt.Errorf("read VeNCrypt subtype: %w", err)
	}
	if st := binary.BigEndian.Uint32(b[:4]); st != vencryptX509None {
		_, _ = c.Write([]byte{0})
		return nil, fmt.Errorf("client chose VeNCrypt subtype %d, offered only X509None (260)", st)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return nil, err
	}
	cfg := v.TLS
	if v.RequireClientCert {
		// Ask for a certificate, check it after the handshake, as QEMU's
		// GnuTLS session does.
		cfg = cfg.Clone()
		cfg.ClientAuth = tls.RequestClientCert
	}
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	if v.RequireClientCert {
		if err := verifyClient(tc.ConnectionState(), v.TLS.ClientCAs); err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
	}
	return tc, nil
}

// verifyClient checks that the client presented a certificate for client
// authentication chaining to cas.
func verifyClient(cs tls.ConnectionState, cas *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("none presented")
	}
	opts := x509.VerifyOptions{Roots: cas, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, ic := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}
