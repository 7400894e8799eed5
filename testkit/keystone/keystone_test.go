package keystone

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"testing"
)

// validate asks Keystone about subject with the service user's token and
// returns the status and the role names.
func validate(t *testing.T, s *Server, service, subject string) (int, []string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.AuthURL+"/v3/auth/tokens?nocatalog", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", service)
	req.Header.Set("X-Subject-Token", subject)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var b struct {
		Token struct {
			Roles []struct {
				Name string `json:"name"`
			} `json:"roles"`
		} `json:"token"`
	}
	var roles []string
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatalf("validation answer: %v: %s", err, body)
		}
		for _, r := range b.Token.Roles {
			roles = append(roles, r.Name)
		}
	}
	return resp.StatusCode, roles
}

var ks Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ks.Close()
	os.Exit(code)
}

func TestKeystoneServesTheDocumentedUsers(t *testing.T) {
	s := ks.Get(t)
	t.Logf("keystone up: setup %v, serve %v, users %v", s.Timings.Setup, s.Timings.Serve, s.Timings.Users)
	service := s.Token(t, s.Service)
	for _, tc := range []struct {
		user User
		role string
	}{{s.Admin, "admin"}, {s.Service, "service"}, {s.Demo, "member"}, {s.Demo, "reader"}} {
		if tc.user.ID == "" || tc.user.ProjectID == "" {
			t.Errorf("user %s: ids not filled in: %+v", tc.user.Name, tc.user)
		}
		status, roles := validate(t, s, service, s.Token(t, tc.user))
		if status != http.StatusOK || !slices.Contains(roles, tc.role) {
			t.Errorf("token of %s validated by nova: got %d %v, want 200 with role %s", tc.user.Name, status, roles, tc.role)
		}
	}

	// demo may not validate others' tokens: only admin and service may.
	if status, _ := validate(t, s, s.Token(t, s.Demo), service); status != http.StatusForbidden {
		t.Errorf("demo validating nova's token: got %d, want 403", status)
	}

	demo := s.Token(t, s.Demo)
	s.Revoke(t, demo)
	if status, _ := validate(t, s, service, demo); status != http.StatusNotFound {
		t.Errorf("revoked token: got %d, want 404", status)
	}

	// Restart keeps data and keys: a token issued before still validates.
	if err := s.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	if status, roles := validate(t, s, service, service); status != http.StatusOK || !slices.Contains(roles, "service") {
		t.Errorf("after Restart: got %d %v, want 200 with role service", status, roles)
	}
}

func TestSharedLaunchesOnce(t *testing.T) {
	if a, b := ks.Get(t), ks.Get(t); a != b {
		t.Errorf("Shared.Get: got two Keystones (%s, %s), want one", a.AuthURL, b.AuthURL)
	}
}
