package authn

import (
	"crypto/x509"
	"fmt"
	"strings"
)

// RoleURIPrefix starts the URI SAN that names a certificate's role:
// urn:vncgate:role:proxy.
const RoleURIPrefix = "urn:vncgate:role:"

// RoleSource is where a certificate's role is read ([vncgate]
// cert_role_source).
type RoleSource string

const (
	// RoleFromSAN reads the URI SAN urn:vncgate:role:ROLE (the default).
	RoleFromSAN RoleSource = "san"
	// RoleFromSubject reads the subject's first organizational unit, for
	// CAs that cannot write URI SANs.
	RoleFromSubject RoleSource = "subject"
)

// ParseRoleSource reads cert_role_source; empty is san.
func ParseRoleSource(s string) (RoleSource, error) {
	switch RoleSource(s) {
	case "", RoleFromSAN:
		return RoleFromSAN, nil
	case RoleFromSubject:
		return RoleFromSubject, nil
	}
	return "", fmt.Errorf("cert_role_source %.40q: want san or subject", s)
}

// FromCertificate is the identity a verified certificate speaks for: its
// subject common name and the role src says where to find. A compute
// agent's common name is its host name, the only host it may act for. A
// certificate without a common name or a known role is refused with an
// error wrapping ErrUnauthenticated. The caller must have verified cert.
func FromCertificate(cert *x509.Certificate, src RoleSource) (Identity, error) {
	name := cert.Subject.CommonName
	if name == "" {
		return Identity{}, refuse(ErrUnauthenticated, "certificate %s has no subject common name to name its caller", describe(cert))
	}
	var role Role
	var err error
	switch src {
	case RoleFromSubject:
		role, err = subjectRole(cert)
	default:
		role, err = sanRole(cert)
	}
	if err != nil {
		return Identity{}, refuse(ErrUnauthenticated, "certificate %s: %v", describe(cert), err)
	}
	id := Identity{Name: name, Role: role, Via: "certificate"}
	if role == RoleCompute {
		id.Host = name
	}
	return id, nil
}

func sanRole(cert *x509.Certificate) (Role, error) {
	// urn:vncgate:role:api parses as scheme "urn", opaque "vncgate:role:api".
	const opaquePrefix = "vncgate:role:"
	found, n := "", 0
	for _, u := range cert.URIs {
		if u.Scheme == "urn" && strings.HasPrefix(u.Opaque, opaquePrefix) {
			found, n = u.Opaque[len(opaquePrefix):], n+1
		}
	}
	switch n {
	case 0:
		return "", fmt.Errorf("no role: want a URI SAN %sROLE (cert_role_source = san) with ROLE one of %s", RoleURIPrefix, roleList())
	case 1:
		return ParseRole(found)
	}
	return "", fmt.Errorf("%d role URI SANs: a certificate speaks for one role", n)
}

func subjectRole(cert *x509.Certificate) (Role, error) {
	ou := cert.Subject.OrganizationalUnit
	if len(ou) == 0 {
		return "", fmt.Errorf("no role: want the subject's first OU (cert_role_source = subject) to be one of %s", roleList())
	}
	return ParseRole(ou[0])
}

// describe names a certificate in messages: its subject, cut short.
func describe(cert *x509.Certificate) string {
	s := cert.Subject.String()
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return fmt.Sprintf("%q", s)
}
