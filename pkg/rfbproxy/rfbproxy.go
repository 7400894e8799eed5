// Package rfbproxy makes a console proxy RFB-aware, for both proxies: it
// speaks the RFB handshake to the client and to the VNC server as Nova's
// security proxy does (so the link to the hypervisor can be VeNCrypt/x509,
// Nova's [vnc] auth_schemes), and it filters a view-only session's client
// messages so no input reaches the VM. The session core (pkg/sessions)
// calls Handshake between the dial and the relay when a proxy has a Config
// or the token is view-only, and wraps the client with ViewOnly for
// view-only tokens.
//
// Handshake poses as an RFB 3.8 server offering only security type None to
// the client (which may answer 3.3, 3.7 or 3.8) and acts as an RFB 3.8
// client to the VNC server, as Nova's security proxy does. It finishes with
// the server first: version; the first security type in the server's list
// that AuthSchemes allows (None 1, VeNCrypt 19); for VeNCrypt, version 0.2,
// subtype X509None (260) only and a TLS handshake that verifies the
// server's chain against Config.TLS's CAs (and its name with
// VerifyHostname); then the server's SecurityResult. Only then does it
// answer the client, so any failure on the server's side reaches the client
// where every RFB version has a failure reason, in place of the security
// types: "Unable to negotiate security with server" (or the server's own
// reason when the server refused). On success the client gets what its
// version expects: 3.3 the type None, 3.7 the list [None], 3.8 the list and,
// after its choice, a SecurityResult OK. Either way the next byte from the
// client is its ClientInit, and the next from the server its ServerInit.
package rfbproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
)

// Config is a proxy's RFB settings.
type Config struct {
	// AuthSchemes are the security types the proxy may use with the VNC
	// server, Nova's [vnc] auth_schemes: "none" (type 1), "vencrypt" (19).
	// The first type in the server's list that one of them allows is used.
	AuthSchemes []string
	// TLS is the VeNCrypt client configuration: the client certificate
	// (vencrypt_client_cert, vencrypt_client_key) and RootCAs
	// (vencrypt_ca_certs). Handshake clones it per session.
	TLS *tls.Config
	// VerifyHostname checks the VNC server's certificate against the host
	// the token names; Nova does not check it.
	VerifyHostname bool
}

// Handshake failures; every error from Handshake wraps exactly one.
var (
	// ErrClient: the client left, or spoke something Handshake refuses.
	ErrClient = errors.New("the console client did not complete the RFB handshake")
	// ErrSecurity: no security type both sides accept, or VeNCrypt failed.
	ErrSecurity = errors.New("unable to negotiate security with the VNC server")
	// ErrNotVNC: the server did not answer with an RFB version.
	ErrNotVNC = errors.New("the VM's console is not a VNC server")
)

// ErrUnknownMessage ends a view-only session whose client sent a message
// type ViewOnly cannot size.
var ErrUnknownMessage = errors.New("unknown RFB client message in a view-only session")

// Result is what a handshake settled, for logs.
type Result struct {
	// Version is the RFB version spoken with the client, e.g. "3.8".
	Version string
	// SecurityType is the type used with the server: 1 None, 19 VeNCrypt.
	SecurityType uint8
	// SubType is the VeNCrypt subtype (260, X509None); 0 otherwise.
	SubType uint32
}

// Handshake runs the RFB handshake with both sides until both are past
// security: the next byte the client sends is its ClientInit. It returns
// the connection to relay with on the server side (TLS over server after
// VeNCrypt). It reads exactly what the protocol says, never more, so no
// byte is lost to the relay. On failure it has told the client why where
// RFB allows (a failure reason, whatever the client's version, when the
// fault is on the server's side; Nova's reason to a 3.8 client choosing a
// type other than None) and returns an error wrapping ErrClient,
// ErrSecurity or ErrNotVNC, whose text gives the real cause. ctx bounds it.
// host is the VNC server's host as the token names it.
//
// A nil cfg, or one without AuthSchemes, allows None only. Should ctx end
// first, both conns are closed. On failure the Result holds what was
// settled so far.
func Handshake(ctx context.Context, client, server net.Conn, host string, cfg *Config) (net.Conn, Result, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	h := &handshake{ctx: ctx, client: client, server: server, host: host, cfg: cfg}
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		server.Close()
	})
	vnc, res, err := h.run()
	if !stop() && err == nil {
		// ctx ended as the handshake did: the conns are closed.
		err = &failure{kind: ErrClient, cause: fmt.Errorf("handshake interrupted: %w", context.Cause(ctx))}
	}
	if err != nil {
		return nil, res, err
	}
	return vnc, res, nil
}
