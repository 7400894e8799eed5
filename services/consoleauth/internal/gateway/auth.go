package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/vncgate/vncgate/pkg/authn"
)

// Auth says how REST callers prove who they are. Every route but /healthz
// and /openapi.json needs a caller; the in-process gRPC server's guard
// then decides, by role, what it may call (403 there).
type Auth struct {
	// Keys are the bearer keys of api_keys_file (Authorization: Bearer
	// KEY); nil accepts none.
	Keys *authn.KeyFile
	// Keystone validates X-Auth-Token (rest_auth = keystone); nil accepts
	// none. KeystoneURI is its auth_url, named in WWW-Authenticate.
	Keystone    authn.TokenValidator
	KeystoneURI string
	// MintRoles are keystone_mint_roles.
	MintRoles []string
	// RoleSource reads the role of a verified client certificate (REST TLS
	// with rest_ca).
	RoleSource authn.RoleSource
	// GatewaySecret passes the caller to the in-process gRPC server
	// (authn.GatewayMetadata).
	GatewaySecret string
	// AllowedHosts are the names a request's Host header may carry (port
	// ignored; "*" allows any). AnyHostWithCertificate lets callers that
	// presented a certificate use any Host (a wildcard rest_listen): a
	// DNS-rebinding page cannot present one.
	AllowedHosts           []string
	AnyHostWithCertificate bool
}

// Caps on credential headers: a bearer key is 47 bytes, a Keystone fernet
// token about 200.
const (
	maxAuthorization = 1 << 10
	maxAuthToken     = 8 << 10
)

type callerKey struct{}

type caller struct {
	id     authn.Identity
	client string
}

// challenges are the WWW-Authenticate values of a 401.
func (a Auth) challenges() []string {
	var c []string
	if a.Keys != nil {
		c = append(c, `Bearer realm="vncgate"`)
	}
	if a.Keystone != nil {
		c = append(c, fmt.Sprintf("Keystone uri=%q", a.KeystoneURI))
	}
	if len(c) == 0 {
		c = append(c, `Mutual realm="vncgate"`) // RFC 8120's name; only a client certificate works
	}
	return c
}

// howTo says which credentials this API takes.
func (a Auth) howTo() string {
	var ways []string
	if a.Keys != nil {
		ways = append(ways, "Authorization: Bearer KEY")
	}
	if a.Keystone != nil {
		ways = append(ways, "X-Auth-Token: a Keystone token")
	}
	ways = append(ways, "a client certificate (TLS with rest_ca)")
	return strings.Join(ways, ", or ")
}

// restError is a refusal the middleware answers itself.
type restError struct {
	status int
	reason string // a fixed word, for the audit line
	msg    string
}

func (e *restError) Error() string { return e.msg }

// authenticate says who sent r.
func (a Auth) authenticate(r *http.Request) (authn.Identity, *restError) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		id, err := authn.FromCertificate(r.TLS.VerifiedChains[0][0], a.RoleSource)
		if err != nil {
			return id, &restError{http.StatusUnauthorized, "unauthenticated", err.Error()}
		}
		return id, nil
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, key, _ := strings.Cut(h, " ")
		switch {
		case len(h) > maxAuthorization:
			return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated", "Authorization header too long"}
		case !strings.EqualFold(scheme, "Bearer"):
			return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated",
				fmt.Sprintf("Authorization scheme %.20q not accepted: send %s", scheme, a.howTo())}
		case a.Keys == nil:
			return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated",
				"bearer keys are not accepted here (no api_keys_file): send " + a.howTo()}
		}
		id, ok := a.Keys.Lookup(strings.TrimSpace(key))
		if !ok {
			return id, &restError{http.StatusUnauthorized, "unauthenticated", "unknown bearer key"}
		}
		return id, nil
	}
	if tok := r.Header.Get("X-Auth-Token"); tok != "" && a.Keystone != nil {
		if len(tok) > maxAuthToken {
			return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated", "X-Auth-Token too long"}
		}
		kt, err := a.Keystone.Validate(r.Context(), tok)
		switch {
		case errors.Is(err, authn.ErrInvalidToken):
			return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated", "the Keystone token is not valid: " + err.Error()}
		case err != nil:
			return authn.Identity{}, &restError{http.StatusServiceUnavailable, "keystone_unavailable",
				"cannot validate the Keystone token now: " + err.Error()}
		}
		id, err := authn.FromKeystone(kt, a.MintRoles)
		if err != nil {
			return id, &restError{http.StatusForbidden, "permission_denied", err.Error()}
		}
		return id, nil
	}
	return authn.Identity{}, &restError{http.StatusUnauthorized, "unauthenticated", "authentication required: send " + a.howTo()}
}

// hostAllowed says whether r's Host header names this API for id.
func (a Auth) hostAllowed(r *http.Request, id authn.Identity) bool {
	if a.AnyHostWithCertificate && id.Via == "certificate" {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	return slices.ContainsFunc(a.AllowedHosts, func(allowed string) bool {
		return allowed == "*" || strings.EqualFold(allowed, host)
	})
}

// protect authenticates every request before next, refuses a Host header
// that does not name this API and a body that is not JSON, and passes
// the caller on in the request's context, with the credentials and every
// Grpc-Metadata-* header removed: nothing a client sends becomes gRPC
// metadata (the mux forwards no header either), so a header cannot stand
// for the caller.
func (a Auth) protect(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := r.RemoteAddr
		if h, _, err := net.SplitHostPort(client); err == nil {
			client = h
		}
		refuse := func(id authn.Identity, e *restError) {
			log.LogAttrs(r.Context(), slog.LevelWarn, "request refused",
				slog.String("caller", id.Name), slog.String("role", string(id.Role)), slog.String("via", id.Via),
				slog.String("method", r.Method+" "+redactPath(r.URL.Path)), slog.String("client", client),
				slog.Int("status", e.status), slog.String("reason", e.reason), slog.String("message", e.msg))
			if e.status == http.StatusUnauthorized {
				for _, c := range a.challenges() {
					w.Header().Add("WWW-Authenticate", c)
				}
			}
			writeFault(w, e.status, e.msg)
		}
		id, rerr := a.authenticate(r)
		if rerr != nil {
			refuse(id, rerr)
			return
		}
		if !a.hostAllowed(r, id) {
			refuse(id, &restError{http.StatusBadRequest, "host_not_allowed",
				fmt.Sprintf("Host %.80q is not a name of this API: add it to [vncgate] rest_allowed_hosts", r.Host)})
			return
		}
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				refuse(id, &restError{http.StatusUnsupportedMediaType, "bad_media_type",
					fmt.Sprintf("Content-Type %.60q not accepted: send application/json", r.Header.Get("Content-Type"))})
				return
			}
		}
		r.Header.Del("Authorization")
		r.Header.Del("X-Auth-Token")
		for k := range r.Header {
			if strings.HasPrefix(k, "Grpc-Metadata-") {
				delete(r.Header, k)
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{id, client})))
	})
}

// metadataOf is the gRPC metadata that tells the in-process server who
// called: only what protect put in the context.
func (a Auth) metadataOf(ctx context.Context, _ *http.Request) metadata.MD {
	c, ok := ctx.Value(callerKey{}).(caller)
	if !ok {
		return nil
	}
	return authn.GatewayMetadata(a.GatewaySecret, c.id, c.client)
}

// redactPath is a path fit for a log line: a console token in it is
// replaced by its route parameter's name.
func redactPath(p string) string {
	const tokens = "/os-console-auth-tokens/"
	if i := strings.Index(p, tokens); i >= 0 {
		return p[:i+len(tokens)] + "{console_token}"
	}
	if len(p) > 120 {
		return p[:120] + "…"
	}
	return p
}
