package keystone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/testkit/novaconf"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// clock is a test's time, moved by hand; the fake Keystone and the
// Validator both read it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// subject is what the fake Keystone knows about a user token.
type subject struct {
	user, project string
	roles         []string
	expires       time.Time
	noProject     bool
}

// fakeKeystone answers POST and GET /v3/auth/tokens as Keystone 22 does,
// and checks the requests' shape.
type fakeKeystone struct {
	t     *testing.T
	clock *clock
	srv   *httptest.Server

	mu          sync.Mutex
	life        time.Duration      // of service tokens
	service     map[string]bool    // service tokens Keystone accepts
	subjects    map[string]subject // user tokens Keystone accepts
	seen        []string           // every token issued or known, to look for in logs
	auths       int
	validations int
	// answer, when set, replaces the validation's answer.
	answer func(w http.ResponseWriter, r *http.Request) bool
	// authAnswer, when set, replaces the authentication's answer.
	authAnswer func(w http.ResponseWriter) bool
}

const (
	svcUser, svcPassword, svcProject = "nova", "s3cret-pw", "service"
)

func newFake(t *testing.T, c *clock) *fakeKeystone {
	f := &fakeKeystone{t: t, clock: c, life: time.Hour, service: map[string]bool{}, subjects: map[string]subject{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeKeystone) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/identity/v3/auth/tokens" {
		f.t.Errorf("fake keystone: %s %s, want /identity/v3/auth/tokens", r.Method, r.URL.Path)
		http.NotFound(w, r)
		return
	}
	if !r.URL.Query().Has("nocatalog") {
		f.t.Errorf("fake keystone: %s without ?nocatalog", r.Method)
	}
	switch r.Method {
	case http.MethodPost:
		f.authenticate(w, r)
	case http.MethodGet:
		f.validate(w, r)
	default:
		f.t.Errorf("fake keystone: method %s", r.Method)
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func keystoneErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"error": {"code": %d, "message": %q, "title": "x"}}`, code, msg)
}

func (f *fakeKeystone) authenticate(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auths++
	if f.authAnswer != nil && f.authAnswer(w) {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("fake keystone: authentication with Content-Type %q", ct)
	}
	var req struct {
		Auth struct {
			Identity struct {
				Methods  []string
				Password struct {
					User struct {
						Name     string
						Password string
						Domain   struct{ Name string }
					}
				}
			}
			Scope struct {
				Project struct {
					Name   string
					Domain struct{ Name string }
				}
			}
		}
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		f.t.Errorf("fake keystone: authentication body: %v", err)
	}
	a := req.Auth
	u, p := a.Identity.Password.User, a.Scope.Project
	if len(a.Identity.Methods) != 1 || a.Identity.Methods[0] != "password" || u.Name != svcUser || u.Password != svcPassword ||
		u.Domain.Name != "Default" || p.Name != svcProject || p.Domain.Name != "Default" {
		keystoneErr(w, http.StatusUnauthorized, "The request you have made requires authentication.")
		return
	}
	tok := fmt.Sprintf("gAAAAservice-token-%d", f.auths)
	f.service[tok] = true
	f.seen = append(f.seen, tok)
	now := f.clock.Now()
	w.Header().Set("X-Subject-Token", tok)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"token": {"methods": ["password"], "user": {"id": "nova-id", "name": "nova"}, "issued_at": %q, "expires_at": %q,
		"project": {"id": "service-id", "name": "service"}, "roles": [{"id": "r1", "name": "service"}]}}`,
		now.Format("2006-01-02T15:04:05.000000Z"), now.Add(f.life).Format("2006-01-02T15:04:05.000000Z"))
}

func (f *fakeKeystone) validate(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.validations++
	answer := f.answer
	f.mu.Unlock()
	if answer != nil && answer(w, r) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.service[r.Header.Get("X-Auth-Token")] {
		keystoneErr(w, http.StatusUnauthorized, "The request you have made requires authentication.")
		return
	}
	s, ok := f.subjects[r.Header.Get("X-Subject-Token")]
	if !ok || !f.clock.Now().Before(s.expires) {
		keystoneErr(w, http.StatusNotFound, "Could not find token: "+r.Header.Get("X-Subject-Token"))
		return
	}
	doc := map[string]any{
		"methods":    []string{"password"},
		"user":       map[string]any{"id": s.user + "-id", "name": s.user, "domain": map[string]string{"id": "default", "name": "Default"}},
		"expires_at": s.expires.Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  s.expires.Add(-time.Hour).Format("2006-01-02T15:04:05.000000Z"),
		"audit_ids":  []string{"x"},
	}
	if !s.noProject {
		doc["project"] = map[string]any{"id": s.project + "-id", "name": s.project}
	}
	var roles []map[string]string
	for _, r := range s.roles {
		roles = append(roles, map[string]string{"id": r + "-id", "name": r})
	}
	doc["roles"] = roles
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": doc})
}

// addToken makes Keystone accept token for user in project with roles,
// for life from now.
func (f *fakeKeystone) addToken(token, user, project string, life time.Duration, roles ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subjects[token] = subject{user: user, project: project, roles: roles, expires: f.clock.Now().Add(life)}
	f.seen = append(f.seen, token)
}

func (f *fakeKeystone) revoke(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subjects, token)
	delete(f.service, token)
}

func (f *fakeKeystone) counts() (auths, validations int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auths, f.validations
}

func (f *fakeKeystone) options() Options {
	return Options{AuthURL: f.srv.URL + "/identity", Username: svcUser, Password: svcPassword, ProjectName: svcProject, CacheTime: DefaultCacheTime}
}

// newValidator returns a Validator of o on f's clock, whose log is checked
// at the end of the test for every token f knows and for the password.
func newValidator(t *testing.T, f *fakeKeystone, o Options) *Validator {
	t.Helper()
	var logs testlog.Buffer
	v, err := New(o, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	v.now = f.clock.Now
	t.Cleanup(v.Close)
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		out := logs.String()
		for _, secret := range append(f.seen, svcPassword) {
			if strings.Contains(out, secret) {
				t.Errorf("the log holds a secret (%.12s…):\n%s", secret, out)
			}
		}
	})
	return v
}

func TestValidateReturnsWhatKeystoneSays(t *testing.T) {
	f := newFake(t, newClock())
	v := newValidator(t, f, f.options())
	f.addToken("gAAAAuser-admin", "admin", "admin", time.Hour, "admin", "member", "reader")
	got, err := v.Validate(context.Background(), "gAAAAuser-admin")
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := Token{UserID: "admin-id", UserName: "admin", ProjectID: "admin-id", ProjectName: "admin",
		Roles: []string{"admin", "member", "reader"}, ExpiresAt: f.clock.Now().Add(time.Hour)}
	if fmt.Sprint(got) != fmt.Sprint(want) || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if !got.HasRole("Admin") || got.HasRole("service") {
		t.Errorf("HasRole: got admin %v, service %v; want true, false", got.HasRole("Admin"), got.HasRole("service"))
	}

	f.subjects["gAAAAunscoped"] = subject{user: "demo", expires: f.clock.Now().Add(time.Hour), noProject: true}
	got, err = v.Validate(context.Background(), "gAAAAunscoped")
	if err != nil || got.ProjectID != "" || got.UserName != "demo" || len(got.Roles) != 0 {
		t.Errorf("unscoped token: got %+v, %v; want user demo, no project, no roles", got, err)
	}
}

func TestInvalidTokens(t *testing.T) {
	f := newFake(t, newClock())
	v := newValidator(t, f, f.options())
	for _, tc := range []struct {
		name, token string
		asks        bool // whether Keystone is asked
	}{
		{"unknown to Keystone", "gAAAAnot-a-token", true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", maxTokenLen+1), false},
		{"header injection", "gAAAA\r\nX-Evil: 1", false},
		{"space", "gAAAA token", false},
		{"not ASCII", "gAAAAtöken", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := f.counts()
			_, err := v.Validate(context.Background(), tc.token)
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("got %v, want ErrInvalidToken", err)
			}
			if _, after := f.counts(); (after > before) != tc.asks {
				t.Errorf("Keystone asked %d times, want asked: %v", after-before, tc.asks)
			}
		})
	}

	// A token Keystone answers for but our clock says has expired.
	f.mu.Lock()
	f.answer = func(w http.ResponseWriter, r *http.Request) bool {
		fmt.Fprintf(w, `{"token": {"user": {"id": "u", "name": "demo"}, "expires_at": %q, "roles": []}}`,
			f.clock.Now().Add(-time.Second).Format(time.RFC3339Nano))
		return true
	}
	f.mu.Unlock()
	if _, err := v.Validate(context.Background(), "gAAAAexpired"); !errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("token expired by our clock: got %v, want ErrInvalidToken saying expired", err)
	}
}

// TestKeystoneFailuresAreNotInvalidTokens: whatever goes wrong on
// Keystone's side must not read as a bad token (401 to a user whose token
// is fine); it is an error the caller answers 503 to.
func TestKeystoneFailuresAreNotInvalidTokens(t *testing.T) {
	elsewhere := 0
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere++ }))
	defer other.Close()
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		want   string // in the error
	}{
		{"403: service user lacks the role", func(w http.ResponseWriter, r *http.Request) {
			keystoneErr(w, http.StatusForbidden, "You are not authorized to perform the requested action: identity:validate_token.")
		}, "give it the service or admin role"},
		{"500 quoting the token", func(w http.ResponseWriter, r *http.Request) {
			keystoneErr(w, http.StatusInternalServerError, "boom with "+r.Header.Get("X-Subject-Token")+" and "+r.Header.Get("X-Auth-Token"))
		}, "500 Internal Server Error validating a token (boom with [redacted] and [redacted])"},
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>proxy error</html>") }, "not a token document"},
		{"no expires_at", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"token": {"user": {"id": "u", "name": "n"}}}`)
		}, "expires_at: missing"},
		{"no user", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"token": {"expires_at": "2099-01-01T00:00:00.000000Z"}}`)
		}, "names no user"},
		{"answer too long", func(w http.ResponseWriter, r *http.Request) {
			w.Write(bytes.Repeat([]byte(" "), maxBody+1))
		}, "longer than"},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/v3/auth/tokens", http.StatusTemporaryRedirect)
		}, "307"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, newClock())
			v := newValidator(t, f, f.options())
			f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
			f.answer = func(w http.ResponseWriter, r *http.Request) bool { tc.answer(w, r); return true }
			_, err := v.Validate(context.Background(), "gAAAAuser")
			if err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error that is not ErrInvalidToken, saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "gAAAA") {
				t.Errorf("the error holds a token: %v", err)
			}
			// Not cached as invalid either: once Keystone is right again,
			// the token works.
			f.mu.Lock()
			f.answer = nil
			f.mu.Unlock()
			if _, err := v.Validate(context.Background(), "gAAAAuser"); err != nil {
				t.Errorf("after Keystone recovered: %v", err)
			}
		})
	}
	if elsewhere != 0 {
		t.Errorf("a redirect was followed: %d requests elsewhere", elsewhere)
	}
}

func TestKeystoneUnreachableOrSlow(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		o := Options{AuthURL: "http://" + addr, Username: "u", Password: "p", ProjectName: "p"}
		v, err := New(o, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Validate(context.Background(), "gAAAAuser")
		if err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("got %v, want connection refused, not ErrInvalidToken", err)
		}
	})
	t.Run("slow", func(t *testing.T) {
		f := newFake(t, newClock())
		release := make(chan struct{})
		defer close(release)
		f.answer = func(w http.ResponseWriter, r *http.Request) bool {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return true
		}
		o := f.options()
		o.Timeout = 50 * time.Millisecond
		v := newValidator(t, f, o)
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		_, err := v.Validate(context.Background(), "gAAAAuser")
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, ErrInvalidToken) {
			t.Errorf("got %v, want a timeout, not ErrInvalidToken", err)
		}
	})
	t.Run("caller gives up", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := v.Validate(ctx, "gAAAAuser"); !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
		// A caller giving up says nothing about Keystone: no hold-down.
		if _, err := v.Validate(context.Background(), "gAAAAuser"); err != nil {
			t.Errorf("next caller: %v", err)
		}
	})
}

func TestServiceToken(t *testing.T) {
	t.Run("obtained once, shared by concurrent requests", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := range 40 {
			tok := fmt.Sprintf("gAAAAuser-%d", i)
			f.addToken(tok, "demo", "demo", time.Hour, "member")
			wg.Go(func() {
				if _, err := v.Validate(context.Background(), tok); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if auths, validations := f.counts(); auths != 1 || validations != 40 {
			t.Errorf("got %d authentications and %d validations, want 1 and 40", auths, validations)
		}
	})
	t.Run("renewed before it expires", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAa", "demo", "demo", 2*time.Hour, "member")
		f.addToken("gAAAAb", "demo", "demo", 2*time.Hour, "member")
		f.addToken("gAAAAc", "demo", "demo", 2*time.Hour, "member")
		mustValidate(t, v, "gAAAAa")
		f.clock.Advance(time.Hour - renewBefore - time.Second) // not yet due
		mustValidate(t, v, "gAAAAb")
		if auths, _ := f.counts(); auths != 1 {
			t.Errorf("before renewal: %d authentications, want 1", auths)
		}
		f.clock.Advance(2 * time.Second) // less than renewBefore left
		mustValidate(t, v, "gAAAAc")
		if auths, _ := f.counts(); auths != 2 {
			t.Errorf("after renewal: %d authentications, want 2", auths)
		}
	})
	t.Run("short-lived: renewed at half life", func(t *testing.T) {
		f := newFake(t, newClock())
		f.life = time.Minute
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAa", "demo", "demo", time.Hour, "member")
		f.addToken("gAAAAb", "demo", "demo", time.Hour, "member")
		mustValidate(t, v, "gAAAAa")
		f.clock.Advance(31 * time.Second)
		mustValidate(t, v, "gAAAAb")
		if auths, _ := f.counts(); auths != 2 {
			t.Errorf("%d authentications, want 2", auths)
		}
	})
	t.Run("authenticates again when Keystone refuses it", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAa", "demo", "demo", time.Hour, "member")
		f.addToken("gAAAAb", "demo", "demo", time.Hour, "member")
		mustValidate(t, v, "gAAAAa")
		f.revoke("gAAAAservice-token-1")
		mustValidate(t, v, "gAAAAb")
		if auths, validations := f.counts(); auths != 2 || validations != 3 {
			t.Errorf("got %d authentications, %d validations; want 2, 3", auths, validations)
		}
	})
	t.Run("401 with a fresh service token is the subject's", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.answer = func(w http.ResponseWriter, r *http.Request) bool {
			keystoneErr(w, http.StatusUnauthorized, "The request you have made requires authentication.")
			return true
		}
		if _, err := v.Validate(context.Background(), "gAAAAuser"); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("got %v, want ErrInvalidToken", err)
		}
		if auths, validations := f.counts(); auths != 2 || validations != 2 {
			t.Errorf("got %d authentications, %d validations; want 2, 2", auths, validations)
		}
	})
	t.Run("credentials refused", func(t *testing.T) {
		f := newFake(t, newClock())
		o := f.options()
		o.Password = "wrong"
		v := newValidator(t, f, o)
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		_, err := v.Validate(context.Background(), "gAAAAuser")
		if err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), `authenticate as "nova" in project "service": credentials refused`) {
			t.Errorf("got %v, want credentials refused, not ErrInvalidToken", err)
		}
	})
	t.Run("failures held down for a second", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		f.authAnswer = func(w http.ResponseWriter) bool {
			keystoneErr(w, http.StatusServiceUnavailable, "down for maintenance")
			return true
		}
		for range 3 {
			if _, err := v.Validate(context.Background(), "gAAAAuser"); err == nil || errors.Is(err, ErrInvalidToken) {
				t.Fatalf("got %v, want a Keystone error", err)
			}
		}
		if auths, _ := f.counts(); auths != 1 {
			t.Errorf("%d authentications within the hold-down, want 1", auths)
		}
		f.mu.Lock()
		f.authAnswer = nil
		f.mu.Unlock()
		f.clock.Advance(authHoldDown)
		mustValidate(t, v, "gAAAAuser")
	})
	t.Run("no usable token in the answer", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.authAnswer = func(w http.ResponseWriter) bool {
			w.Header().Set("X-Subject-Token", "")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, `{"token": {"expires_at": "2099-01-01T00:00:00.000000Z"}}`)
			return true
		}
		if _, err := v.Validate(context.Background(), "gAAAAuser"); err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "X-Subject-Token") {
			t.Errorf("got %v, want an error about X-Subject-Token", err)
		}
	})
}

func mustValidate(t *testing.T, v *Validator, token string) Token {
	t.Helper()
	got, err := v.Validate(context.Background(), token)
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return got
}

func TestCache(t *testing.T) {
	t.Run("valid answers until token_cache_time, keyed by hash", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		mustValidate(t, v, "gAAAAuser").Roles[0] = "admin" // must not reach the cache
		f.revoke("gAAAAuser")
		// Revoked in Keystone, still trusted from the cache: what Nova's
		// keystonemiddleware does too, for at most token_cache_time.
		if got := mustValidate(t, v, "gAAAAuser"); len(got.Roles) != 1 || got.Roles[0] != "member" {
			t.Errorf("from the cache: roles %v, want [member]", got.Roles)
		}
		if _, validations := f.counts(); validations != 1 {
			t.Errorf("%d validations, want 1 (the second from the cache)", validations)
		}
		if keys := v.valid.Keys(); len(keys) != 1 || keys[0] != sha256.Sum256([]byte("gAAAAuser")) {
			t.Errorf("cache keys: got %x, want the token's SHA-256 only", keys)
		}
		f.clock.Advance(DefaultCacheTime)
		if _, err := v.Validate(context.Background(), "gAAAAuser"); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("after token_cache_time: got %v, want ErrInvalidToken", err)
		}
	})
	t.Run("valid answers no longer than the token", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		f.addToken("gAAAAuser", "demo", "demo", time.Minute, "member")
		mustValidate(t, v, "gAAAAuser")
		f.clock.Advance(time.Minute)
		if _, err := v.Validate(context.Background(), "gAAAAuser"); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("after the token expired: got %v, want ErrInvalidToken", err)
		}
		if _, validations := f.counts(); validations != 2 {
			t.Errorf("%d validations, want 2", validations)
		}
	})
	t.Run("token_cache_time 0 asks every time", func(t *testing.T) {
		f := newFake(t, newClock())
		o := f.options()
		o.CacheTime = 0
		v := newValidator(t, f, o)
		f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")
		mustValidate(t, v, "gAAAAuser")
		mustValidate(t, v, "gAAAAuser")
		if _, validations := f.counts(); validations != 2 {
			t.Errorf("%d validations, want 2", validations)
		}
	})
	t.Run("invalid answers for 10 s", func(t *testing.T) {
		f := newFake(t, newClock())
		v := newValidator(t, f, f.options())
		for range 5 {
			if _, err := v.Validate(context.Background(), "gAAAAflood"); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("got %v, want ErrInvalidToken", err)
			}
		}
		if _, validations := f.counts(); validations != 1 {
			t.Errorf("%d validations for 5 tries, want 1", validations)
		}
		// Keystone may learn the token (a token issued by a Keystone
		// behind in replication): seen once the entry ends.
		f.addToken("gAAAAflood", "demo", "demo", time.Hour, "member")
		f.clock.Advance(invalidCacheTime)
		mustValidate(t, v, "gAAAAflood")
	})
	t.Run("bounded", func(t *testing.T) {
		f := newFake(t, newClock())
		o := f.options()
		o.CacheSize = 2
		v := newValidator(t, f, o)
		for _, tok := range []string{"gAAAA1", "gAAAA2", "gAAAA3"} {
			f.addToken(tok, "demo", "demo", time.Hour, "member")
			mustValidate(t, v, tok)
		}
		mustValidate(t, v, "gAAAA3")
		mustValidate(t, v, "gAAAA1") // evicted: asked again
		if _, validations := f.counts(); validations != 4 {
			t.Errorf("%d validations, want 4", validations)
		}
	})
}

func TestHTTPS(t *testing.T) {
	c := newClock()
	f := &fakeKeystone{t: t, clock: c, life: time.Hour, service: map[string]bool{}, subjects: map[string]subject{}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	defer f.srv.Close()
	f.addToken("gAAAAuser", "demo", "demo", time.Hour, "member")

	// Without its CA, Keystone's certificate is refused.
	v := newValidator(t, f, f.options())
	if _, err := v.Validate(context.Background(), "gAAAAuser"); err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without cafile: got %v, want a certificate error", err)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(ca, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	o := f.options()
	o.CAFile = ca
	v = newValidator(t, f, o)
	mustValidate(t, v, "gAAAAuser")
}

func TestNewRefusesBadOptions(t *testing.T) {
	good := Options{AuthURL: "https://keystone.example:5000/v3", Username: "nova", Password: "pw", ProjectName: "service"}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	for _, tc := range []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no auth_url", func(o *Options) { o.AuthURL = "" }, "auth_url is empty"},
		{"no username", func(o *Options) { o.Username = "" }, "username is empty"},
		{"no password", func(o *Options) { o.Password = "" }, "password is empty"},
		{"no project", func(o *Options) { o.ProjectName = "" }, "project_name is empty"},
		{"ftp", func(o *Options) { o.AuthURL = "ftp://keystone.example/v3" }, "want an http or https URL"},
		{"no host", func(o *Options) { o.AuthURL = "https:///v3" }, "no host"},
		{"query", func(o *Options) { o.AuthURL = "https://keystone.example/v3?x=1" }, "want no user, query or fragment"},
		{"user in URL", func(o *Options) { o.AuthURL = "https://a:b@keystone.example/v3" }, "want no user, query or fragment"},
		{"v2.0", func(o *Options) { o.AuthURL = "https://keystone.example:5000/v2.0/" }, "v2.0 API is gone"},
		{"plaintext off loopback", func(o *Options) { o.AuthURL = "http://keystone.example:5000/v3" }, "plaintext off loopback"},
		{"negative timeout", func(o *Options) { o.Timeout = -time.Second }, "http_connect_timeout"},
		{"negative cache time", func(o *Options) { o.CacheTime = -time.Second }, "token_cache_time"},
		{"negative cache size", func(o *Options) { o.CacheSize = -1 }, "keystone_cache_size"},
		{"missing cafile", func(o *Options) { o.CAFile = "/nonexistent/ca.pem" }, "cafile"},
		{"cafile without PEM", func(o *Options) { o.CAFile = notPEM }, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.change(&o)
			_, err := New(o, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name      string
		authURL   string
		plaintext bool
		want      string
	}{
		{"root", "https://keystone.example:5000", false, "https://keystone.example:5000/v3/auth/tokens"},
		{"v3", "https://keystone.example:5000/v3", false, "https://keystone.example:5000/v3/auth/tokens"},
		{"v3 slash", "https://keystone.example:5000/v3/", false, "https://keystone.example:5000/v3/auth/tokens"},
		{"path prefix", "https://cloud.example/identity", false, "https://cloud.example/identity/v3/auth/tokens"},
		{"loopback http", "http://127.0.0.1:5000/v3", false, "http://127.0.0.1:5000/v3/auth/tokens"},
		{"localhost http", "http://localhost:5000", false, "http://localhost:5000/v3/auth/tokens"},
		{"http allowed", "http://keystone.example:5000/v3", true, "http://keystone.example:5000/v3/auth/tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tokensURL(tc.authURL, tc.plaintext)
			if err != nil || got != tc.want {
				t.Errorf("tokensURL(%q): got %q, %v; want %q", tc.authURL, got, err, tc.want)
			}
		})
	}
	o := good
	o.UserDomainName, o.ProjectDomainName = "", ""
	v, err := New(o, nil)
	if err != nil || v.opts.UserDomainName != "Default" || v.opts.ProjectDomainName != "Default" ||
		v.opts.Timeout != DefaultTimeout || v.opts.CacheTime != 0 {
		t.Errorf("zero options: got %+v, %v; want Default domains, the default timeout, cache time as given", v.opts, err)
	}
}

func TestDeclare(t *testing.T) {
	dir := t.TempDir()
	// A [keystone_authtoken] as Nova's install guide writes it, with
	// keystonemiddleware options vncgate has no use for.
	nova := filepath.Join(dir, "nova.conf")
	os.WriteFile(nova, []byte(`[keystone_authtoken]
www_authenticate_uri = https://controller:5000/
auth_url = https://controller:5000/
memcached_servers = controller:11211
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = NOVA_PASS
region_name = RegionOne
service_token_roles_required = true
token_cache_time = 120
cafile = /etc/ssl/keystone-ca.pem

[vncgate]
keystone_cache_size = 500
`), 0o600)
	s := config.New("consoleauth")
	var o Options
	o.Declare(s)
	t.Setenv("VNCGATE_KEYSTONE_PASSWORD", "from-env")
	notes, err := s.Load([]string{"--config-file", nova})
	if err != nil {
		t.Fatal(err)
	}
	want := Options{AuthURL: "https://controller:5000/", Username: "nova", Password: "from-env", ProjectName: "service",
		UserDomainName: "Default", ProjectDomainName: "Default", Timeout: DefaultTimeout, CacheSize: 500, CacheTime: 120 * time.Second,
		CAFile: "/etc/ssl/keystone-ca.pem"}
	if o != want {
		t.Errorf("got %+v\nwant %+v", o, want)
	}
	if len(notes.Unsupported) != 0 {
		t.Errorf("auth_type = password warned about: %v", notes.Unsupported)
	}

	// Defaults, and a warning for an auth_type vncgate cannot do.
	other := filepath.Join(dir, "other.conf")
	os.WriteFile(other, []byte("[keystone_authtoken]\nauth_type = v3applicationcredential\n"), 0o600)
	s = config.New("consoleauth")
	o = Options{}
	o.Declare(s)
	notes, err = s.Load([]string{"--config-file", other})
	if err != nil {
		t.Fatal(err)
	}
	if o.CacheTime != DefaultCacheTime || o.CacheSize != DefaultCacheSize || o.Timeout != DefaultTimeout || o.UserDomainName != "Default" {
		t.Errorf("defaults: got %+v", o)
	}
	if len(notes.Unsupported) != 1 || !strings.Contains(notes.Unsupported[0], "auth_type") {
		t.Errorf("auth_type = v3applicationcredential: got notes %v, want one warning", notes.Unsupported)
	}
}

// TestNovaSample: the [keystone_authtoken] of Nova's own sample nova.conf
// (Debian's nova-common) is read without a warning and, with a password,
// makes a working set of options.
func TestNovaSample(t *testing.T) {
	s := config.New("consoleauth")
	var o Options
	o.Declare(s)
	t.Setenv("VNCGATE_KEYSTONE_PASSWORD", "NOVA_PASS")
	notes, err := s.Load([]string{"--config-file", novaconf.Sample(t)})
	if err != nil {
		t.Fatal(err)
	}
	if o.AuthURL != "http://localhost:5000" || o.Username != "nova" || o.ProjectName != "service" || o.UserDomainName != "Default" {
		t.Errorf("got %+v, want the sample's auth_url, username, project_name and domains", o)
	}
	if len(notes.Unsupported) != 0 {
		t.Errorf("warnings for the sample: %v", notes.Unsupported)
	}
	v, err := New(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.tokens != "http://localhost:5000/v3/auth/tokens" {
		t.Errorf("tokens URL: got %s, want http://localhost:5000/v3/auth/tokens", v.tokens)
	}
}
