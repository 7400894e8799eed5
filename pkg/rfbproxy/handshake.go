package rfbproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
)

// Security types (RFC 6143 7.1.2) and the VeNCrypt subtype the proxy uses.
const (
	typeInvalid  = 0
	typeNone     = 1
	typeVeNCrypt = 19
	// subX509None is VeNCrypt's X509None: TLS with the server's x509
	// certificate, no further authentication inside.
	subX509None = 260
)

// version38 is the only version the proxy offers either side.
const version38 = "RFB 003.008\n"

const (
	// refusedReason is what the client is told when the proxy cannot
	// negotiate security with the server, in Nova's words.
	refusedReason = "Unable to negotiate security with server"
	// wrongTypeReason answers a 3.8 client that chose a type not offered,
	// in Nova's words.
	wrongTypeReason = "Only the security type 1 (NONE) is supported"
	// maxReason caps the failure reason of a server that the proxy reads
	// and passes on; a longer one is replaced by refusedReason.
	maxReason = 1024
)

// closedAfterTLS is the likely cause of a VNC server closing the
// connection right after the TLS handshake: QEMU with verify-peer=yes
// checks the client's certificate only then and closes without an alert.
const closedAfterTLS = "the VNC server closed the connection after TLS: it may require a client certificate the proxy did not present or does not trust"

// failure is a Handshake error: the sentinel it belongs to, its cause, and
// the RFB failure reason the client is given, if any ("" when the client is
// at fault or gone).
type failure struct {
	kind   error // ErrClient, ErrSecurity or ErrNotVNC
	cause  error
	reason string
}

func (f *failure) Error() string   { return f.kind.Error() + ": " + f.cause.Error() }
func (f *failure) Unwrap() []error { return []error{f.kind, f.cause} }

// handshake is one run of Handshake.
type handshake struct {
	ctx            context.Context
	client, server net.Conn
	host           string
	cfg            *Config
}

// run negotiates with the server first, then with the client, so that a
// failure on the server's side reaches the client as an RFB failure reason
// whatever version the client speaks: 3.3 and 3.7 have nowhere to put one
// once the client has chosen None.
func (h *handshake) run() (net.Conn, Result, error) {
	var res Result
	vnc, serverErr := h.negotiateServer(&res)
	minor, err := h.clientVersion()
	if err != nil {
		if serverErr != nil {
			return nil, res, serverErr // the story; the client could not be told
		}
		return nil, res, err
	}
	res.Version = fmt.Sprintf("3.%d", minor)
	if serverErr != nil {
		var f *failure
		reason := refusedReason
		if errors.As(serverErr, &f) && f.reason != "" {
			reason = f.reason
		}
		h.refuseClient(minor, reason) // best effort: the server's failure is the error
		return nil, res, serverErr
	}
	if err := h.clientSecurity(minor); err != nil {
		return nil, res, err
	}
	return vnc, res, nil
}

// ioCause explains a failed read or write: by ctx when it has ended (the
// conns were closed for it), else by err.
func (h *handshake) ioCause(what string, err error) error {
	if cerr := context.Cause(h.ctx); cerr != nil {
		return fmt.Errorf("%s: %w", what, cerr)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func securityFailure(cause error) error {
	return &failure{kind: ErrSecurity, cause: cause, reason: refusedReason}
}

// serverRefusal is the server's own failure, whose reason (when it gave one
// short enough) is passed on to the client as a transparent relay would.
func serverRefusal(what, reason string) error {
	if reason == "" {
		return &failure{kind: ErrSecurity, cause: errors.New(what), reason: refusedReason}
	}
	return &failure{kind: ErrSecurity, cause: fmt.Errorf("%s: %q", what, reason), reason: reason}
}

// negotiateServer speaks RFB 3.8 to the server as a client up to and
// including its SecurityResult, and returns the conn to go on with.
func (h *handshake) negotiateServer(res *Result) (net.Conn, error) {
	allowed, err := allowedTypes(h.cfg)
	if err != nil {
		return nil, securityFailure(err)
	}
	var b [12]byte
	if n, err := io.ReadFull(h.server, b[:]); err != nil {
		what := "read the VNC server's RFB version"
		if n > 0 {
			what = fmt.Sprintf("read the VNC server's RFB version (got %q)", b[:n])
		}
		return nil, &failure{kind: ErrNotVNC, cause: h.ioCause(what, err), reason: refusedReason}
	}
	major, minor, ok := parseVersion(b[:])
	if !ok {
		return nil, &failure{kind: ErrNotVNC, cause: fmt.Errorf("the server's first bytes %q are not an RFB version", b[:]), reason: refusedReason}
	}
	if major < 3 || major == 3 && minor < 8 {
		return nil, securityFailure(fmt.Errorf("the VNC server speaks RFB %d.%d; the security proxy needs 3.8", major, minor))
	}
	if _, err := io.WriteString(h.server, version38); err != nil {
		return nil, securityFailure(h.ioCause("write the RFB version to the VNC server", err))
	}
	if _, err := io.ReadFull(h.server, b[:1]); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's security types", err))
	}
	if b[0] == 0 {
		reason, err := h.readReason(h.server)
		if err != nil {
			return nil, securityFailure(h.ioCause("read the VNC server's failure reason", err))
		}
		return nil, serverRefusal("the VNC server refused the connection", reason)
	}
	types := make([]byte, b[0])
	if _, err := io.ReadFull(h.server, types); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's security types", err))
	}
	i := slices.IndexFunc(types, func(t byte) bool { return slices.Contains(allowed, t) })
	if i < 0 {
		return nil, securityFailure(fmt.Errorf("the VNC server offers security types %s; auth_schemes allows %s",
			typeList(types), typeList(allowed)))
	}
	chosen := types[i]
	res.SecurityType = chosen
	if _, err := h.server.Write([]byte{chosen}); err != nil {
		return nil, securityFailure(h.ioCause("write the security type to the VNC server", err))
	}
	vnc := h.server
	if chosen == typeVeNCrypt {
		if vnc, err = h.vencrypt(); err != nil {
			return nil, err
		}
		res.SubType = subX509None
	}
	if err := h.securityResult(vnc, chosen == typeVeNCrypt); err != nil {
		return nil, err
	}
	return vnc, nil
}

// allowedTypes are the security types cfg's auth_schemes allow; none when
// cfg is nil or lists no scheme, as Nova's default.
func allowedTypes(cfg *Config) ([]byte, error) {
	if cfg == nil || len(cfg.AuthSchemes) == 0 {
		return []byte{typeNone}, nil
	}
	var allowed []byte
	for _, s := range cfg.AuthSchemes {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "none":
			allowed = append(allowed, typeNone)
		case "vencrypt":
			allowed = append(allowed, typeVeNCrypt)
		default:
			return nil, fmt.Errorf("auth_schemes: %q is not a scheme the proxy speaks (none, vencrypt)", s)
		}
	}
	return allowed, nil
}

// vencrypt runs VeNCrypt 0.2 with subtype X509None and the TLS handshake,
// and returns the TLS conn.
func (h *handshake) vencrypt() (net.Conn, error) {
	var b [4]byte
	if _, err := io.ReadFull(h.server, b[:2]); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's VeNCrypt version", err))
	}
	if b[0] != 0 || b[1] < 2 {
		return nil, securityFailure(fmt.Errorf("the VNC server speaks VeNCrypt %d.%d; the proxy needs 0.2", b[0], b[1]))
	}
	if _, err := h.server.Write([]byte{0, 2}); err != nil {
		return nil, securityFailure(h.ioCause("write the VeNCrypt version to the VNC server", err))
	}
	if _, err := io.ReadFull(h.server, b[:1]); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's VeNCrypt version answer", err))
	}
	if b[0] != 0 { // and nothing follows
		return nil, securityFailure(errors.New("the VNC server refused VeNCrypt version 0.2"))
	}
	if _, err := io.ReadFull(h.server, b[1:2]); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's VeNCrypt subtypes", err))
	}
	if b[1] == 0 {
		return nil, securityFailure(errors.New("the VNC server offers no VeNCrypt subtype"))
	}
	raw := make([]byte, 4*int(b[1]))
	if _, err := io.ReadFull(h.server, raw); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's VeNCrypt subtypes", err))
	}
	subtypes := make([]uint32, b[1])
	for i := range subtypes {
		subtypes[i] = binary.BigEndian.Uint32(raw[4*i:])
	}
	if !slices.Contains(subtypes, subX509None) {
		// The others are refused as Nova does: Plain has no encryption,
		// the TLS* ones are anonymous Diffie-Hellman, open to a man in the
		// middle, and X509Vnc/Plain/SASL need credentials the proxy lacks.
		return nil, securityFailure(fmt.Errorf("the VNC server offers VeNCrypt subtypes %s; the proxy accepts only X509None (260)",
			subtypeList(subtypes)))
	}
	if _, err := h.server.Write(binary.BigEndian.AppendUint32(nil, subX509None)); err != nil {
		return nil, securityFailure(h.ioCause("write the VeNCrypt subtype to the VNC server", err))
	}
	if _, err := io.ReadFull(h.server, b[:1]); err != nil {
		return nil, securityFailure(h.ioCause("read the VNC server's VeNCrypt subtype answer", err))
	}
	if b[0] != 1 {
		return nil, securityFailure(errors.New("the VNC server refused VeNCrypt subtype X509None"))
	}
	cfg, err := h.tlsConfig()
	if err != nil {
		return nil, securityFailure(err)
	}
	tc := tls.Client(h.server, cfg)
	if err := tc.HandshakeContext(h.ctx); err != nil {
		return nil, securityFailure(h.ioCause("TLS handshake with the VNC server", err))
	}
	return tc, nil
}

// tlsConfig is the session's TLS client configuration: cfg.TLS's
// certificate and CAs; the server's chain is always verified, its name
// against the token's host only with VerifyHostname (Nova never checks it).
func (h *handshake) tlsConfig() (*tls.Config, error) {
	c := &tls.Config{}
	if h.cfg.TLS != nil {
		c = h.cfg.TLS.Clone()
	}
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
	if h.cfg.VerifyHostname {
		host := strings.TrimSuffix(strings.TrimPrefix(h.host, "["), "]")
		if host == "" {
			return nil, errors.New("no VNC server host to check its certificate against")
		}
		// An IP address is checked against the certificate's IP SANs.
		c.ServerName, c.InsecureSkipVerify = host, false
		return c, nil
	}
	roots := c.RootCAs
	c.InsecureSkipVerify = true // the name; the chain is checked below
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: the VNC server sent no certificate")
		}
		opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: failed to verify certificate: %w", err)
		}
		return nil
	}
	return c, nil
}

// securityResult reads the server's SecurityResult (RFB 3.8: for None too)
// and, on failure, its reason.
func (h *handshake) securityResult(vnc net.Conn, inTLS bool) error {
	var b [4]byte
	if _, err := io.ReadFull(vnc, b[:]); err != nil {
		if inTLS && h.ctx.Err() == nil {
			var op *net.OpError
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
				return securityFailure(fmt.Errorf("%s (%w)", closedAfterTLS, err))
			case errors.As(err, &op) && op.Op == "remote error":
				return securityFailure(fmt.Errorf("the VNC server ended the TLS session after the handshake (%w): "+
					"it may require a client certificate the proxy did not present or does not trust", err))
			}
		}
		return securityFailure(h.ioCause("read the VNC server's security result", err))
	}
	if binary.BigEndian.Uint32(b[:]) == 0 {
		return nil
	}
	reason, err := h.readReason(vnc)
	if err != nil {
		return securityFailure(h.ioCause("read the VNC server's failure reason", err))
	}
	return serverRefusal("the VNC server refused the security handshake", reason)
}

// readReason reads a failure reason (U32 length, then the text): "" when
// the server sent an empty one or one longer than maxReason, which is left
// unread (the connection ends anyway).
func (h *handshake) readReason(r io.Reader) (string, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", err
	}
	n := binary.BigEndian.Uint32(b[:])
	if n > maxReason {
		return "", nil
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(r, text); err != nil {
		return "", err
	}
	return string(text), nil
}

// clientVersion offers the client RFB 3.8 and returns the minor version it
// chose: 8, 7, or 3 for 3.3 and any other 3.x (RFC 6143 7.1.1).
func (h *handshake) clientVersion() (int, error) {
	if _, err := io.WriteString(h.client, version38); err != nil {
		return 0, &failure{kind: ErrClient, cause: h.ioCause("write the RFB version to the client", err)}
	}
	var b [12]byte
	if _, err := io.ReadFull(h.client, b[:]); err != nil {
		return 0, &failure{kind: ErrClient, cause: h.ioCause("read the client's RFB version", err)}
	}
	major, minor, ok := parseVersion(b[:])
	if !ok {
		return 0, &failure{kind: ErrClient, cause: fmt.Errorf("the client's first bytes %q are not an RFB version", b[:])}
	}
	if major != 3 {
		return 0, &failure{kind: ErrClient, cause: fmt.Errorf("the client speaks RFB %d.%d, not 3.x", major, minor)}
	}
	switch minor {
	case 8, 7:
		return minor, nil
	}
	return 3, nil
}

// refuseClient tells the client security failed, at the only place every
// version has a failure reason: instead of the security types.
func (h *handshake) refuseClient(minor int, reason string) {
	var msg []byte
	if minor == 3 {
		msg = binary.BigEndian.AppendUint32(msg, typeInvalid)
	} else {
		msg = append(msg, 0) // no security types
	}
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(reason)))
	_, _ = h.client.Write(append(msg, reason...))
}

// clientSecurity offers the client None, the only type it gets, and ends
// its security phase as its version says: 3.3 is told the type, 3.7 and
// 3.8 choose it, and 3.8 alone gets a SecurityResult.
func (h *handshake) clientSecurity(minor int) error {
	if minor == 3 {
		if _, err := h.client.Write(binary.BigEndian.AppendUint32(nil, typeNone)); err != nil {
			return &failure{kind: ErrClient, cause: h.ioCause("write the security type to the client", err)}
		}
		return nil
	}
	if _, err := h.client.Write([]byte{1, typeNone}); err != nil {
		return &failure{kind: ErrClient, cause: h.ioCause("write the security types to the client", err)}
	}
	var b [1]byte
	if _, err := io.ReadFull(h.client, b[:]); err != nil {
		return &failure{kind: ErrClient, cause: h.ioCause("read the client's security type", err)}
	}
	if b[0] != typeNone {
		if minor == 8 {
			msg := binary.BigEndian.AppendUint32(nil, 1)
			msg = binary.BigEndian.AppendUint32(msg, uint32(len(wrongTypeReason)))
			_, _ = h.client.Write(append(msg, wrongTypeReason...))
		}
		return &failure{kind: ErrClient, cause: fmt.Errorf("the client chose security type %s; only None (1) is offered", typeName(b[0]))}
	}
	if minor == 8 {
		if _, err := h.client.Write([]byte{0, 0, 0, 0}); err != nil {
			return &failure{kind: ErrClient, cause: h.ioCause("write the security result to the client", err)}
		}
	}
	return nil
}

// parseVersion reads "RFB xxx.yyy\n".
func parseVersion(b []byte) (major, minor int, ok bool) {
	if len(b) != 12 || string(b[:4]) != "RFB " || b[7] != '.' || b[11] != '\n' {
		return 0, 0, false
	}
	num := func(d []byte) (int, bool) {
		n := 0
		for _, c := range d {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	major, ok1 := num(b[4:7])
	minor, ok2 := num(b[8:11])
	return major, minor, ok1 && ok2
}

var typeNames = map[byte]string{
	1: "None", 2: "VNC Authentication", 5: "RA2", 6: "RA2ne", 16: "Tight", 17: "Ultra", 18: "TLS",
	19: "VeNCrypt", 20: "SASL", 21: "MD5", 22: "xvp", 30: "Apple Remote Desktop",
}

func typeName(t byte) string {
	if n, ok := typeNames[t]; ok {
		return fmt.Sprintf("%d (%s)", t, n)
	}
	return fmt.Sprint(t)
}

func typeList(ts []byte) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = typeName(t)
	}
	return "[" + strings.Join(names, ", ") + "]"
}

var subtypeNames = map[uint32]string{
	256: "Plain", 257: "TLSNone", 258: "TLSVnc", 259: "TLSPlain",
	260: "X509None", 261: "X509Vnc", 262: "X509Plain", 263: "TLSSASL", 264: "X509SASL",
}

func subtypeList(ts []uint32) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		if n, ok := subtypeNames[t]; ok {
			names[i] = fmt.Sprintf("%d (%s)", t, n)
		} else {
			names[i] = fmt.Sprint(t)
		}
	}
	return "[" + strings.Join(names, ", ") + "]"
}
