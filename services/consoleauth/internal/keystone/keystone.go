// Package keystone checks OpenStack Keystone tokens for consoleauth's REST
// API, as Nova's API does through keystonemiddleware's auth_token: the
// caller's X-Auth-Token is validated with Keystone's v3 API and the answer
// says who the caller is (user, project, roles).
//
// What it promises:
//   - The service authenticates to Keystone with its own password
//     credentials ([keystone_authtoken] in nova.conf, Nova's names), scoped
//     to its project, keeps that service token, renews it before it
//     expires and authenticates again when Keystone refuses it (401). A
//     failed authentication is repeated to every request for a second
//     without asking Keystone, so an outage fails requests at once.
//   - A user token is validated with GET /v3/auth/tokens?nocatalog. Keystone
//     answering 404 (unknown, expired or revoked) or, after a fresh service
//     token, 401 is ErrInvalidToken (HTTP 401 to the caller); every other
//     failure (Keystone unreachable, slow, 5xx, refusing the service user)
//     is another error (HTTP 503): a Keystone outage never reads as "bad
//     token".
//   - Valid answers are cached until the token expires but at most
//     token_cache_time (300 s by default, keystonemiddleware's default), in
//     a bounded LRU keyed by the token's SHA-256: a revoked token keeps
//     working until its cache entry ends, as it does behind Nova's
//     keystonemiddleware. Invalid answers are cached for 10 s, so a flood of
//     one bad token costs Keystone one request per 10 s.
//   - No token is logged or put in an error (Keystone's messages quoting
//     one are blotted out); user tokens are not kept, only their SHA-256
//     in the cache; the service token lives in memory only.
//   - Every call to Keystone has a timeout and reads a bounded answer.
package keystone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// ErrInvalidToken means Keystone does not accept the token: unknown,
// expired, revoked or malformed. The caller answers 401.
var ErrInvalidToken = errors.New("keystone token not valid")

// Defaults of the zero Options fields that have one.
const (
	DefaultTimeout   = 10 * time.Second
	DefaultCacheSize = 10000
	// DefaultCacheTime is keystonemiddleware's token_cache_time.
	DefaultCacheTime = 300 * time.Second
)

const (
	// invalidCacheTime is how long a refused token stays refused without
	// asking Keystone again.
	invalidCacheTime = 10 * time.Second
	// maxTokenLen caps the tokens sent to Keystone; Keystone's own
	// max_token_size is 255 and fernet tokens are about 180 bytes.
	maxTokenLen = 8192
	// maxBody caps an answer read from Keystone: a nocatalog token is a
	// few kilobytes even with many roles.
	maxBody = 1 << 20
	// renewBefore: the service token is renewed when it has less than
	// this left (keystoneauth renews 120 s ahead), or less than half its
	// life for short-lived tokens.
	renewBefore = 2 * time.Minute
	// authHoldDown is how long a failure to authenticate is repeated
	// without asking Keystone again.
	authHoldDown = time.Second
	// defaultDomain is Keystone's default domain, for empty domain names.
	defaultDomain = "Default"
)

// Options are the service's Keystone settings: keystonemiddleware's names
// in [keystone_authtoken] (see Declare).
type Options struct {
	// AuthURL is Keystone's identity endpoint, http(s)://host:port with or
	// without a path; /v3 is added unless the path ends in it.
	AuthURL string
	// Username and Password are the service user's (Nova's "nova").
	Username, Password string
	// ProjectName is the service user's project (usually "service").
	ProjectName string
	// UserDomainName and ProjectDomainName name the domains of user and
	// project; empty means "Default", Keystone's default domain.
	UserDomainName, ProjectDomainName string
	// Timeout bounds every request to Keystone; 0 means DefaultTimeout.
	Timeout time.Duration
	// CacheSize is how many valid tokens are cached at most (and as many
	// refused ones); 0 means DefaultCacheSize.
	CacheSize int
	// CacheTime caps how long a valid answer is reused; 0 turns the cache
	// of valid answers off (every request asks Keystone).
	CacheTime time.Duration
	// CAFile verifies Keystone's certificate with an https AuthURL; empty
	// means the system's roots.
	CAFile string
	// AllowPlaintext is [vncgate] allow_plaintext: an http AuthURL off
	// loopback carries the service password in plaintext and is refused
	// without it. Declare does not declare it: the caller copies it.
	AllowPlaintext bool
}

// Declare declares the options in s under [keystone_authtoken] with
// keystonemiddleware's names (flags and environment variables get a
// keystone_ prefix: --keystone_password would otherwise be --password),
// and the cache size under [vncgate].
func (o *Options) Declare(s *config.Set) {
	sec := config.SectionKeystoneAuthToken
	s.String(&o.AuthURL, sec, "auth_url", "", "Keystone's identity endpoint (http://keystone:5000/v3)").Flag("keystone_auth_url")
	s.String(&o.Username, sec, "username", "", "consoleauth's service user in Keystone").Flag("keystone_username")
	s.String(&o.Password, sec, "password", "", "the service user's password").Flag("keystone_password")
	s.String(&o.ProjectName, sec, "project_name", "", "the service user's project (service)").Flag("keystone_project_name")
	s.String(&o.UserDomainName, sec, "user_domain_name", defaultDomain, "the service user's domain").Flag("keystone_user_domain_name")
	s.String(&o.ProjectDomainName, sec, "project_domain_name", defaultDomain, "the service project's domain").Flag("keystone_project_domain_name")
	s.String(&o.CAFile, sec, "cafile", "", "CA (PEM) that verifies Keystone's certificate; the system's roots when empty").Flag("keystone_cafile")
	s.Seconds(&o.Timeout, sec, "http_connect_timeout", DefaultTimeout, "timeout of every request to Keystone; 0 means 10 s").Flag("keystone_http_connect_timeout")
	s.Seconds(&o.CacheTime, sec, "token_cache_time", DefaultCacheTime,
		"how long a validated token is trusted without asking Keystone again (a revocation is seen after at most this long); 0 asks every time").Flag("keystone_token_cache_time")
	s.Int(&o.CacheSize, config.SectionVNCGate, "keystone_cache_size", DefaultCacheSize, "how many validated Keystone tokens are cached at most")
}

// Token is what Keystone says about a valid token.
type Token struct {
	UserID, UserName string
	// ProjectID and ProjectName are empty for a token not scoped to a
	// project (unscoped, domain or system scope).
	ProjectID, ProjectName string
	// Roles are the role names on the scope, implied roles included
	// (member brings reader).
	Roles []string
	// ExpiresAt is when Keystone stops accepting the token.
	ExpiresAt time.Time
}

// HasRole reports whether the token carries role (case-insensitive, as
// oslo.policy compares roles).
func (t Token) HasRole(role string) bool {
	return slices.ContainsFunc(t.Roles, func(r string) bool { return strings.EqualFold(r, role) })
}

// Validator validates tokens with one Keystone. It is safe for concurrent
// use.
type Validator struct {
	opts    Options
	tokens  string // the /v3/auth/tokens URL
	client  *http.Client
	log     *slog.Logger
	valid   *lru.Cache[[sha256.Size]byte, cached]
	invalid *lru.Cache[[sha256.Size]byte, time.Time] // until when refused
	now     func() time.Time                         // the clock; tests move it

	// authLock is held while authenticating, so that concurrent requests
	// wait for one authentication instead of each making their own; a
	// channel rather than a mutex so a waiter can give up with its ctx.
	authLock chan struct{}
	mu       sync.Mutex // guards the fields below
	service  serviceToken
	// authErr is the last failure to authenticate, repeated without
	// asking Keystone until authRetry: during an outage requests fail at
	// once instead of queueing behind one timeout after another.
	authErr   error
	authRetry time.Time
}

type cached struct {
	token Token
	until time.Time
}

type serviceToken struct {
	token   string
	renewAt time.Time // by our clock
}

// New checks o and returns a Validator. It does not contact Keystone: the
// service token is obtained on the first validation, so consoleauth starts
// while Keystone is down and recovers when it comes back.
func New(o Options, log *slog.Logger) (*Validator, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.UserDomainName == "" {
		o.UserDomainName = defaultDomain
	}
	if o.ProjectDomainName == "" {
		o.ProjectDomainName = defaultDomain
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	switch {
	case o.Username == "":
		return nil, errors.New("[keystone_authtoken] username is empty")
	case o.Password == "":
		return nil, errors.New("[keystone_authtoken] password is empty")
	case o.ProjectName == "":
		return nil, errors.New("[keystone_authtoken] project_name is empty")
	case o.Timeout < 0:
		return nil, fmt.Errorf("[keystone_authtoken] http_connect_timeout %v: negative", o.Timeout)
	case o.CacheTime < 0:
		return nil, fmt.Errorf("[keystone_authtoken] token_cache_time %v: negative", o.CacheTime)
	case o.CacheSize < 0:
		return nil, fmt.Errorf("[vncgate] keystone_cache_size %d: negative", o.CacheSize)
	}
	tokens, err := tokensURL(o.AuthURL, o.AllowPlaintext)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("[keystone_authtoken] cafile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("[keystone_authtoken] cafile %s: no PEM certificate in it", o.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	valid, err := lru.New[[sha256.Size]byte, cached](o.CacheSize)
	if err != nil {
		return nil, err
	}
	invalid, err := lru.New[[sha256.Size]byte, time.Time](o.CacheSize)
	if err != nil {
		return nil, err
	}
	return &Validator{
		opts:   o,
		tokens: tokens,
		// No redirects: a redirect would carry the service token (and the
		// user's) wherever Keystone's answer points.
		client: &http.Client{Transport: tr, Timeout: o.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		log:      log,
		valid:    valid,
		invalid:  invalid,
		now:      time.Now,
		authLock: make(chan struct{}, 1),
	}, nil
}

// tokensURL is Keystone's /v3/auth/tokens for auth_url.
func tokensURL(authURL string, allowPlaintext bool) (string, error) {
	if authURL == "" {
		return "", errors.New("[keystone_authtoken] auth_url is empty")
	}
	u, err := url.Parse(authURL)
	if err != nil {
		return "", fmt.Errorf("[keystone_authtoken] auth_url: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("[keystone_authtoken] auth_url %q: want an http or https URL", authURL)
	case u.Host == "":
		return "", fmt.Errorf("[keystone_authtoken] auth_url %q: no host", authURL)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("[keystone_authtoken] auth_url %q: want no user, query or fragment", authURL)
	}
	if u.Scheme == "http" {
		if err := tlsconfig.CheckPlaintext("[keystone_authtoken] auth_url", u.Hostname(), allowPlaintext); err != nil {
			return "", err
		}
	}
	path := strings.TrimRight(u.Path, "/")
	switch {
	case strings.HasSuffix(path, "/v2.0"):
		return "", fmt.Errorf("[keystone_authtoken] auth_url %q: Keystone's v2.0 API is gone; use its v3 endpoint", authURL)
	case !strings.HasSuffix(path, "/v3"):
		path += "/v3"
	}
	u.Path, u.RawPath = path+"/auth/tokens", ""
	return u.String(), nil
}

// Close releases idle connections to Keystone.
func (v *Validator) Close() { v.client.CloseIdleConnections() }

// Validate asks Keystone (or the cache) about token. An error that is not
// ErrInvalidToken means Keystone could not say.
func (v *Validator) Validate(ctx context.Context, token string) (Token, error) {
	if err := wellFormed(token); err != nil {
		return Token{}, err
	}
	key := sha256.Sum256([]byte(token))
	now := v.now()
	if c, ok := v.valid.Get(key); ok {
		if now.Before(c.until) {
			t := c.token
			t.Roles = slices.Clone(t.Roles) // the caller's to change
			return t, nil
		}
		v.valid.Remove(key)
	}
	if until, ok := v.invalid.Get(key); ok {
		if now.Before(until) {
			return Token{}, fmt.Errorf("%w (refused by Keystone moments ago)", ErrInvalidToken)
		}
		v.invalid.Remove(key)
	}
	t, err := v.validate(ctx, token)
	switch {
	case errors.Is(err, ErrInvalidToken):
		v.invalid.Add(key, v.now().Add(invalidCacheTime))
		return Token{}, err
	case err != nil:
		return Token{}, err
	}
	if v.opts.CacheTime > 0 {
		until := v.now().Add(v.opts.CacheTime)
		if t.ExpiresAt.Before(until) {
			until = t.ExpiresAt
		}
		c := cached{t, until}
		c.token.Roles = slices.Clone(t.Roles) // the cache's own
		v.valid.Add(key, c)
	}
	return t, nil
}

// wellFormed refuses, without asking Keystone, what cannot be a token and
// would not fit in a header.
func wellFormed(token string) error {
	switch {
	case token == "":
		return fmt.Errorf("%w: empty", ErrInvalidToken)
	case len(token) > maxTokenLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidToken, maxTokenLen)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: a byte outside printable ASCII at offset %d", ErrInvalidToken, i)
		}
	}
	return nil
}

// validate asks Keystone, authenticating again once if Keystone refuses
// the service token.
func (v *Validator) validate(ctx context.Context, token string) (Token, error) {
	svc, err := v.serviceToken(ctx, "")
	if err != nil {
		return Token{}, err
	}
	t, err := v.check(ctx, svc, token)
	if !errors.Is(err, errServiceRefused) {
		return t, err
	}
	// Keystone answers 401 for a bad X-Auth-Token (revoked, expired
	// early, keys rotated); with a fresh one, a 401 is about the subject.
	v.log.Info("keystone refused the service token; authenticating again")
	if svc, err = v.serviceToken(ctx, svc); err != nil {
		return Token{}, err
	}
	t, err = v.check(ctx, svc, token)
	if errors.Is(err, errServiceRefused) {
		return Token{}, fmt.Errorf("%w: Keystone answers 401 to it", ErrInvalidToken)
	}
	return t, err
}

// errServiceRefused is Keystone's 401 to a validation: the service token
// or the subject may be at fault.
var errServiceRefused = errors.New("keystone answered 401 to a validation")

// tokenBody is Keystone's token document, the parts used here.
type tokenBody struct {
	Token struct {
		ExpiresAt string `json:"expires_at"`
		IssuedAt  string `json:"issued_at"`
		User      struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"user"`
		Project *struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"project"`
		Roles []struct {
			Name string `json:"name"`
		} `json:"roles"`
	} `json:"token"`
}

// check is one GET /v3/auth/tokens.
func (v *Validator) check(ctx context.Context, service, token string) (Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.tokens+"?nocatalog", nil)
	if err != nil {
		return Token{}, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Auth-Token", service)
	req.Header.Set("X-Subject-Token", token)
	resp, err := v.client.Do(req)
	if err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: %w", err)
	}
	defer resp.Body.Close()
	body, err := readBody(resp.Body)
	if err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return Token{}, fmt.Errorf("%w: Keystone does not know it (unknown, expired or revoked)", ErrInvalidToken)
	case http.StatusUnauthorized:
		return Token{}, errServiceRefused
	case http.StatusForbidden:
		return Token{}, fmt.Errorf("keystone: 403 validating a token: service user %q may not validate tokens; give it the service or admin role (%s)",
			v.opts.Username, keystoneError(body, service, token))
	default:
		return Token{}, fmt.Errorf("keystone: %s validating a token (%s)", resp.Status, keystoneError(body, service, token))
	}
	var b tokenBody
	if err := json.Unmarshal(body, &b); err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: answer is not a token document: %w", err)
	}
	expires, err := parseTime(b.Token.ExpiresAt)
	if err != nil {
		return Token{}, fmt.Errorf("keystone: validate a token: expires_at: %w", err)
	}
	if b.Token.User.ID == "" {
		return Token{}, errors.New("keystone: validate a token: answer names no user")
	}
	// keystonemiddleware checks this too: our clock may be ahead of
	// Keystone's, and an expired token must not be cached as valid.
	if !v.now().Before(expires) {
		return Token{}, fmt.Errorf("%w: expired at %s", ErrInvalidToken, expires.Format(time.RFC3339))
	}
	t := Token{UserID: b.Token.User.ID, UserName: b.Token.User.Name, ExpiresAt: expires}
	if p := b.Token.Project; p != nil {
		t.ProjectID, t.ProjectName = p.ID, p.Name
	}
	for _, r := range b.Token.Roles {
		t.Roles = append(t.Roles, r.Name)
	}
	return t, nil
}

// serviceToken returns the service token, authenticating when there is
// none, when it is due for renewal, or when it is refused (Keystone
// refused it: the caller passes it as stale).
func (v *Validator) serviceToken(ctx context.Context, stale string) (string, error) {
	if tok, ok := v.currentServiceToken(stale); ok {
		return tok, nil
	}
	select {
	case v.authLock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("keystone: wait for the service token: %w", ctx.Err())
	}
	defer func() { <-v.authLock }()
	// Another request may have authenticated, or failed to, while this
	// one waited.
	if tok, ok := v.currentServiceToken(stale); ok {
		return tok, nil
	}
	v.mu.Lock()
	err, retry := v.authErr, v.authRetry
	v.mu.Unlock()
	if err != nil && v.now().Before(retry) {
		return "", err
	}
	s, err := v.authenticate(ctx)
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		// A request that gave up (its ctx) says nothing about Keystone.
		if ctx.Err() == nil {
			v.authErr, v.authRetry = err, v.now().Add(authHoldDown)
		}
		return "", err
	}
	v.service, v.authErr = s, nil
	return s.token, nil
}

func (v *Validator) currentServiceToken(stale string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.service
	return s.token, s.token != "" && s.token != stale && v.now().Before(s.renewAt)
}

// authRequest is the body of a password authentication scoped to a
// project.
func (v *Validator) authRequest() ([]byte, error) {
	type named struct {
		Name string `json:"name"`
	}
	var r struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string `json:"name"`
						Domain   named  `json:"domain"`
						Password string `json:"password"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					Name   string `json:"name"`
					Domain named  `json:"domain"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	r.Auth.Identity.Methods = []string{"password"}
	u := &r.Auth.Identity.Password.User
	u.Name, u.Domain.Name, u.Password = v.opts.Username, v.opts.UserDomainName, v.opts.Password
	p := &r.Auth.Scope.Project
	p.Name, p.Domain.Name = v.opts.ProjectName, v.opts.ProjectDomainName
	return json.Marshal(r)
}

// authenticate is one POST /v3/auth/tokens with the service's credentials.
func (v *Validator) authenticate(ctx context.Context) (serviceToken, error) {
	body, err := v.authRequest()
	if err != nil {
		return serviceToken{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.tokens+"?nocatalog", bytes.NewReader(body))
	if err != nil {
		return serviceToken{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: %w", v.opts.Username, err)
	}
	defer resp.Body.Close()
	answer, err := readBody(resp.Body)
	if err != nil {
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: %w", v.opts.Username, err)
	}
	switch resp.StatusCode {
	case http.StatusCreated, http.StatusOK:
	case http.StatusUnauthorized:
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q in project %q: credentials refused (%s)",
			v.opts.Username, v.opts.ProjectName, keystoneError(answer, v.opts.Password))
	default:
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: %s (%s)", v.opts.Username, resp.Status, keystoneError(answer, v.opts.Password))
	}
	tok := resp.Header.Get("X-Subject-Token")
	if wellFormed(tok) != nil {
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: no usable X-Subject-Token in the answer", v.opts.Username)
	}
	var b tokenBody
	if err := json.Unmarshal(answer, &b); err != nil {
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: answer is not a token document: %w", v.opts.Username, err)
	}
	expires, err := parseTime(b.Token.ExpiresAt)
	if err != nil {
		return serviceToken{}, fmt.Errorf("keystone: authenticate as %q: expires_at: %w", v.opts.Username, err)
	}
	issued, err := parseTime(b.Token.IssuedAt)
	if err != nil || !issued.Before(expires) {
		issued = expires.Add(-time.Hour) // Keystone's default life; only the renewal point depends on it
	}
	// Renew by our clock, from the token's life as Keystone states it,
	// so that a skew between the clocks does not matter.
	life := expires.Sub(issued)
	s := serviceToken{token: tok, renewAt: v.now().Add(life - min(renewBefore, life/2))}
	v.log.Debug("authenticated to keystone", "user", v.opts.Username, "project", v.opts.ProjectName,
		"expires_at", expires, "renew_at", s.renewAt)
	return s, nil
}

// readBody reads an answer of at most maxBody bytes.
func readBody(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("answer longer than %d bytes", maxBody)
	}
	return b, nil
}

// keystoneError is the message of Keystone's error document, cut short,
// for error texts, with secrets blotted out: Keystone's messages may quote
// a token ("Could not find token: gAAAA…").
func keystoneError(body []byte, secrets ...string) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	msg := "no message"
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return logSafe(msg, 200)
}

// parseTime reads Keystone's times: RFC 3339 in UTC, with microseconds
// ("2026-11-30T14:54:12.000000Z").
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: not an RFC 3339 time", logSafe(s, 40))
	}
	return t, nil
}

// logSafe cuts a text from Keystone's answer to n bytes for an error text,
// on a rune boundary.
func logSafe(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
