package rfbproxy

import (
	"fmt"
	"strings"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Options are both proxies' RFB settings, under Nova's names.
type Options struct {
	AuthSchemes    []string // [vnc] auth_schemes
	ClientCert     string   // [vnc] vencrypt_client_cert
	ClientKey      string   // [vnc] vencrypt_client_key
	CACerts        string   // [vnc] vencrypt_ca_certs
	VerifyHostname bool     // [vncgate] vencrypt_verify_hostname
}

// Declare declares the options on s, into o.
func (o *Options) Declare(s *config.Set) {
	s.List(&o.AuthSchemes, config.SectionVNC, "auth_schemes", nil,
		"security types the proxy may use with VNC servers: none, vencrypt (the first the server offers wins); "+
			"empty: the proxy relays RFB untouched and the client negotiates with the server")
	s.String(&o.ClientCert, config.SectionVNC, "vencrypt_client_cert", "", "PEM client certificate the proxy presents to VeNCrypt VNC servers")
	s.String(&o.ClientKey, config.SectionVNC, "vencrypt_client_key", "", "PEM key of vencrypt_client_cert")
	s.String(&o.CACerts, config.SectionVNC, "vencrypt_ca_certs", "", "PEM CA certificates that VeNCrypt VNC servers' certificates must chain to")
	s.Bool(&o.VerifyHostname, config.SectionVNCGate, "vencrypt_verify_hostname", true,
		"check a VeNCrypt VNC server's certificate against the host its compute agent reports (Nova does not)")
}

// Config is the proxy's rfbproxy configuration, nil when auth_schemes is
// empty (bytes are relayed untouched, except for view-only sessions).
func (o Options) Config() (*Config, error) {
	if len(o.AuthSchemes) == 0 {
		if o.ClientCert != "" || o.ClientKey != "" || o.CACerts != "" {
			return nil, fmt.Errorf("vencrypt_* options are set but auth_schemes is empty: add vencrypt to auth_schemes")
		}
		return nil, nil
	}
	vencrypt := false
	for _, s := range o.AuthSchemes {
		switch strings.ToLower(s) {
		case "none":
		case "vencrypt":
			vencrypt = true
		default:
			return nil, fmt.Errorf("auth_schemes: %q is not a scheme vncgate speaks (none, vencrypt)", s)
		}
	}
	cfg := &Config{AuthSchemes: o.AuthSchemes, VerifyHostname: o.VerifyHostname}
	if !vencrypt {
		return cfg, nil
	}
	if o.CACerts == "" {
		return nil, fmt.Errorf("auth_schemes has vencrypt: vencrypt_ca_certs is required to verify VNC servers")
	}
	if (o.ClientCert == "") != (o.ClientKey == "") {
		return nil, fmt.Errorf("vencrypt_client_cert and vencrypt_client_key go together")
	}
	tc, err := tlsconfig.Files{Cert: o.ClientCert, Key: o.ClientKey, CA: o.CACerts}.Client()
	if err != nil {
		return nil, fmt.Errorf("vencrypt: %w", err)
	}
	cfg.TLS = tc
	return cfg, nil
}
