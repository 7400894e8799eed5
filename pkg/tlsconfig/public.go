package tlsconfig

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
)

// Public is the TLS of a proxy's public port, under Nova's option names.
// An empty Cert means no TLS.
type Public struct {
	// Cert is [DEFAULT] cert: the certificate chain, and the private key
	// too when Key is empty.
	Cert string
	// Key is [DEFAULT] key, when the key has a file of its own.
	Key string
	// MinimumVersion is [console] ssl_minimum_version (see [MinVersion]).
	MinimumVersion string
	// Ciphers is [console] ssl_ciphers (see [CipherSuites]).
	Ciphers string
}

// Enabled reports whether the port speaks TLS.
func (p Public) Enabled() bool { return p.Cert != "" }

// Check validates the settings without reading a file. It returns
// warnings for the caller to log: ssl_ciphers words that select nothing Go
// implements.
func (p Public) Check() (warnings []string, err error) {
	if p.Key != "" && p.Cert == "" {
		return nil, errors.New("key is set but cert is not")
	}
	if _, err := MinVersion(p.MinimumVersion); err != nil {
		return nil, err
	}
	_, ignored, err := CipherSuites(p.Ciphers)
	if err != nil {
		return nil, err
	}
	if !p.Enabled() {
		return nil, nil
	}
	if len(ignored) > 0 {
		warnings = append(warnings, "ssl_ciphers: ignored, nothing Go implements: "+strings.Join(ignored, ":"))
	}
	return warnings, nil
}

// Config returns the server configuration of the public port, HTTP/1.1
// only when nextProtos says so; nil without a certificate.
func (p Public) Config(nextProtos ...string) (*tls.Config, error) {
	if !p.Enabled() {
		return nil, nil
	}
	min, err := MinVersion(p.MinimumVersion)
	if err != nil {
		return nil, err
	}
	suites, _, err := CipherSuites(p.Ciphers)
	if err != nil {
		return nil, err
	}
	pair, err := LoadPair(p.Cert, p.Key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   min,
		CipherSuites: suites,
		Certificates: []tls.Certificate{pair},
		NextProtos:   nextProtos,
	}, nil
}

// MinVersion reads Nova's ssl_minimum_version, the same set of values in
// every service: "default" (or empty) is TLS 1.2, Go's own floor for
// servers, as Nova's "default" is the TLS library's; "tlsv1_2" and
// "tlsv1_3" require that version or newer. Nova's "tlsv1_1" is refused:
// every vncgate listener speaks TLS 1.2 or newer (RFC 8996 deprecates 1.1).
func MinVersion(name string) (uint16, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "", "default", "tlsv1_2":
		return tls.VersionTLS12, nil
	case "tlsv1_1":
		return 0, fmt.Errorf("ssl_minimum_version %s: TLS 1.1 is refused (deprecated by RFC 8996); use default (TLS 1.2), tlsv1_2 or tlsv1_3", name)
	case "tlsv1_3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("ssl_minimum_version %q: want default, tlsv1_2 or tlsv1_3", name)
}

// suite is what an OpenSSL cipher string can select a TLS 1.2 suite by.
type suite struct {
	id       uint16
	openssl  string
	kx, auth string // "ECDHE" or "RSA"; "ECDSA" or "RSA"
	enc      []string
	mac      string
}

// suites are the TLS 1.0-1.2 suites Go implements and considers secure
// (tls.CipherSuites), with their OpenSSL names and attributes.
var suites = []suite{
	{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE", "ECDSA", []string{"AES", "AES128", "AESGCM"}, "AEAD"},
	{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE", "RSA", []string{"AES", "AES128", "AESGCM"}, "AEAD"},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE", "ECDSA", []string{"AES", "AES256", "AESGCM"}, "AEAD"},
	{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE", "RSA", []string{"AES", "AES256", "AESGCM"}, "AEAD"},
	{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE", "ECDSA", []string{"CHACHA20"}, "AEAD"},
	{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE", "RSA", []string{"CHACHA20"}, "AEAD"},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, "ECDHE-ECDSA-AES128-SHA", "ECDHE", "ECDSA", []string{"AES", "AES128"}, "SHA1"},
	{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, "ECDHE-RSA-AES128-SHA", "ECDHE", "RSA", []string{"AES", "AES128"}, "SHA1"},
	{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, "ECDHE-ECDSA-AES256-SHA", "ECDHE", "ECDSA", []string{"AES", "AES256"}, "SHA1"},
	{tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, "ECDHE-RSA-AES256-SHA", "ECDHE", "RSA", []string{"AES", "AES256"}, "SHA1"},
	{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, "AES128-GCM-SHA256", "RSA", "RSA", []string{"AES", "AES128", "AESGCM"}, "AEAD"},
	{tls.TLS_RSA_WITH_AES_256_GCM_SHA384, "AES256-GCM-SHA384", "RSA", "RSA", []string{"AES", "AES256", "AESGCM"}, "AEAD"},
	{tls.TLS_RSA_WITH_AES_128_CBC_SHA, "AES128-SHA", "RSA", "RSA", []string{"AES", "AES128"}, "SHA1"},
	{tls.TLS_RSA_WITH_AES_256_CBC_SHA, "AES256-SHA", "RSA", "RSA", []string{"AES", "AES256"}, "SHA1"},
}

// matches reports whether s has the attribute an OpenSSL cipher string
// names (ciphers(1): key exchange kEECDH/kECDHE/ECDHE/EECDH or kRSA,
// authentication aECDSA/ECDSA or aRSA, encryption AES/AES128/AES256/AESGCM/
// CHACHA20, MAC SHA1/SHA256/SHA384, groups HIGH/ALL/DEFAULT/COMPLEMENTOFDEFAULT),
// or is the suite itself (OpenSSL or IANA name). known is false for a word
// this table does not know.
func (s suite) matches(word string) (match, known bool) {
	switch word {
	case "ALL", "HIGH", "DEFAULT":
		return true, true
	case "kEECDH", "kECDHE", "ECDHE", "EECDH":
		return s.kx == "ECDHE", true
	case "kRSA":
		return s.kx == "RSA", true
	case "RSA":
		return s.kx == "RSA" || s.auth == "RSA", true
	case "aRSA":
		return s.auth == "RSA", true
	case "aECDSA", "ECDSA":
		return s.auth == "ECDSA", true
	case "SHA1", "SHA":
		return s.mac == "SHA1", true
	case "SHA256", "SHA384":
		// The PRF hash of the AEAD suites; OpenSSL files GCM-SHA384 under SHA384.
		return s.mac == "AEAD" && strings.HasSuffix(tls.CipherSuiteName(s.id), word), true
	case "AES", "AES128", "AES256", "AESGCM", "CHACHA20":
		for _, e := range s.enc {
			if e == word {
				return true, true
			}
		}
		return false, true
	case "COMPLEMENTOFDEFAULT", "COMPLEMENTOFALL", "MEDIUM", "LOW", "EXP", "EXPORT", "eNULL", "NULL", "aNULL",
		"RC4", "3DES", "DES", "MD5", "DSS", "aDSS", "PSK", "SRP", "CAMELLIA", "ARIA", "SEED", "IDEA",
		"kDHE", "kEDH", "DHE", "EDH", "DH", "ADH", "AECDH", "kPSK", "aPSK", "SSLv3", "TLSv1", "TLSv1.0", "TLSv1.2":
		return false, true
	}
	if word == s.openssl || word == tls.CipherSuiteName(s.id) {
		return true, true
	}
	for _, o := range suites {
		if word == o.openssl || word == tls.CipherSuiteName(o.id) {
			return false, true
		}
	}
	return false, false
}

// CipherSuites reads Nova's ssl_ciphers, an OpenSSL cipher string, into
// the TLS 1.2 suites Go offers, in order. Names may be OpenSSL's
// (ECDHE-RSA-AES128-GCM-SHA256) or IANA's (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
// separated by ':', ',' or spaces; words joined by '+' select the suites
// having every attribute (kEECDH+aECDSA+AES); a leading '!' or '-' removes
// suites, '+' moves them to the end, as ciphers(1) describes; '@' commands
// are ignored. Words that select nothing Go implements (DHE, 3DES, unknown
// names) are returned in ignored, as OpenSSL ignores them; a string
// selecting nothing at all is an error. Empty s means Go's defaults (nil).
// TLS 1.3 suites are not configurable, in Go as in OpenSSL's cipher string.
func CipherSuites(s string) (ids []uint16, ignored []string, err error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil, nil
	}
	var list []suite
	removed := map[uint16]bool{}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == ',' || r == ' ' || r == '\t' || r == '\n' })
	for _, f := range fields {
		op := byte(0)
		if f[0] == '!' || f[0] == '-' || f[0] == '+' {
			op, f = f[0], f[1:]
		}
		if f == "" || f[0] == '@' {
			continue
		}
		var sel []suite
		known := true
		for _, c := range suites {
			ok := true
			for _, w := range strings.Split(f, "+") {
				m, k := c.matches(w)
				known = known && k
				ok = ok && m
			}
			if ok {
				sel = append(sel, c)
			}
		}
		if !known || len(sel) == 0 && op == 0 {
			ignored = append(ignored, f)
			continue
		}
		switch op {
		case '!':
			for _, c := range sel {
				removed[c.id] = true
			}
			list = without(list, sel)
		case '-':
			list = without(list, sel)
		case '+':
			var moved []suite
			for _, c := range list {
				if contains(sel, c) {
					moved = append(moved, c)
				}
			}
			list = append(without(list, moved), moved...)
		default:
			for _, c := range sel {
				if !removed[c.id] && !contains(list, c) {
					list = append(list, c)
				}
			}
		}
	}
	if len(list) == 0 {
		return nil, ignored, fmt.Errorf("ssl_ciphers %q selects no cipher suite Go implements (it offers %s)", s, goSuiteNames())
	}
	for _, c := range list {
		ids = append(ids, c.id)
	}
	return ids, ignored, nil
}

func contains(list []suite, c suite) bool {
	for _, l := range list {
		if l.id == c.id {
			return true
		}
	}
	return false
}

func without(list, drop []suite) []suite {
	var out []suite
	for _, c := range list {
		if !contains(drop, c) {
			out = append(out, c)
		}
	}
	return out
}

func goSuiteNames() string {
	names := make([]string, len(suites))
	for i, c := range suites {
		names[i] = c.openssl
	}
	return strings.Join(names, ":")
}
