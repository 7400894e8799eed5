package keystone

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	testkeystone "github.com/vncgate/vncgate/testkit/keystone"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// ks is one real Keystone for this package's tests, launched by the first
// test that asks for it (15–35 s).
var ks testkeystone.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ks.Close()
	os.Exit(code)
}

// realValidator validates with Keystone srv as user u, on a clock the
// test moves; its log is checked for tokens at the end of the test.
func realValidator(t *testing.T, srv *testkeystone.Server, u testkeystone.User, c *clock, tokens *[]string) (*Validator, *testlog.Buffer) {
	t.Helper()
	var logs testlog.Buffer
	v, err := New(Options{AuthURL: srv.AuthURL, Username: u.Name, Password: u.Password, ProjectName: u.Project, CacheTime: DefaultCacheTime},
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	v.now = c.Now
	t.Cleanup(v.Close)
	t.Cleanup(func() {
		for _, tok := range append(*tokens, u.Password) {
			if strings.Contains(logs.String(), tok) {
				t.Errorf("the log holds a secret (%.12s…)", tok)
			}
		}
	})
	return v, &logs
}

// TestAgainstKeystone runs the validator against a real Keystone 22. Its
// last subtest stops and restarts Keystone.
func TestAgainstKeystone(t *testing.T) {
	srv := ks.Get(t)
	t.Logf("keystone at %s: setup %v, serve %v, users %v", srv.AuthURL, srv.Timings.Setup, srv.Timings.Serve, srv.Timings.Users)
	ctx := context.Background()
	c := &clock{t: time.Now()}
	var tokens []string
	token := func(u testkeystone.User) string {
		tok := srv.Token(t, u)
		tokens = append(tokens, tok)
		return tok
	}
	v, logs := realValidator(t, srv, srv.Service, c, &tokens)

	t.Run("admin token", func(t *testing.T) {
		got := mustValidate(t, v, token(srv.Admin))
		if got.UserID != srv.Admin.ID || got.UserName != "admin" || got.ProjectID != srv.Admin.ProjectID || got.ProjectName != "admin" ||
			!got.HasRole("admin") || !got.HasRole("member") {
			t.Errorf("got %+v, want user admin in project admin with roles admin and member", got)
		}
		if life := time.Until(got.ExpiresAt); life < 50*time.Minute || life > time.Hour {
			t.Errorf("expires_at %v: want an hour from now (Keystone's default)", got.ExpiresAt)
		}
	})
	t.Run("demo token", func(t *testing.T) {
		got := mustValidate(t, v, token(srv.Demo))
		if got.UserID != srv.Demo.ID || got.ProjectName != "demo" || !got.HasRole("member") || !got.HasRole("reader") || got.HasRole("admin") {
			t.Errorf("got %+v, want user demo in project demo with roles member and reader, not admin", got)
		}
	})
	t.Run("garbage tokens", func(t *testing.T) {
		admin := token(srv.Admin)
		forged := admin[:len(admin)-4] + "AAAA"
		for _, tok := range []string{"not-a-token", forged, strings.Repeat("gAAAAA", 40)} {
			if _, err := v.Validate(ctx, tok); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("Validate(%.10s…): got %v, want ErrInvalidToken", tok, err)
			}
		}
	})
	t.Run("revoked token", func(t *testing.T) {
		demo := token(srv.Demo)
		mustValidate(t, v, demo)
		srv.Revoke(t, demo)
		// Seen at once by a validator without the token in its cache…
		fresh, _ := realValidator(t, srv, srv.Service, c, &tokens)
		if _, err := fresh.Validate(ctx, demo); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("revoked, not cached: got %v, want ErrInvalidToken", err)
		}
		// …and by one that cached it once its entry ends (token_cache_time,
		// as with Nova's keystonemiddleware).
		mustValidate(t, v, demo)
		c.Advance(DefaultCacheTime)
		if _, err := v.Validate(ctx, demo); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("revoked, after token_cache_time: got %v, want ErrInvalidToken", err)
		}
	})
	t.Run("service token revoked: authenticates again", func(t *testing.T) {
		v.mu.Lock()
		old := v.service.token
		v.mu.Unlock()
		if old == "" {
			t.Fatal("no service token yet")
		}
		tokens = append(tokens, old)
		srv.Revoke(t, old)
		mustValidate(t, v, token(srv.Demo))
		v.mu.Lock()
		renewed := v.service.token
		v.mu.Unlock()
		if renewed == old || renewed == "" || !strings.Contains(logs.String(), "keystone refused the service token") {
			t.Errorf("the service token was not renewed on Keystone's 401:\n%s", logs)
		}
		tokens = append(tokens, renewed)
	})
	t.Run("service user without the service role", func(t *testing.T) {
		weak, _ := realValidator(t, srv, srv.Demo, c, &tokens)
		_, err := weak.Validate(ctx, token(srv.Admin))
		if err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "give it the service or admin role") {
			t.Errorf("got %v, want a 403 error naming the missing role, not ErrInvalidToken", err)
		}
	})
	t.Run("wrong service password", func(t *testing.T) {
		u := srv.Service
		u.Password = "wrong"
		bad, _ := realValidator(t, srv, u, c, &tokens)
		_, err := bad.Validate(ctx, token(srv.Demo))
		if err == nil || errors.Is(err, ErrInvalidToken) || !strings.Contains(err.Error(), "credentials refused") {
			t.Errorf("got %v, want credentials refused, not ErrInvalidToken", err)
		}
	})
	t.Run("keystone stopped", func(t *testing.T) {
		cachedToken := token(srv.Demo)
		mustValidate(t, v, cachedToken)
		unseen := token(srv.Demo)
		srv.Stop()
		// What the cache holds still works: a Keystone outage shorter
		// than token_cache_time costs the users who came before nothing.
		mustValidate(t, v, cachedToken)
		_, err := v.Validate(ctx, unseen)
		if err == nil || errors.Is(err, ErrInvalidToken) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("keystone stopped: got %v, want connection refused, not ErrInvalidToken", err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		c.Advance(authHoldDown)
		mustValidate(t, v, unseen)
	})
}
