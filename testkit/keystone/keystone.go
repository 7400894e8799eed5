// Package keystone runs a real OpenStack Keystone for tests: Debian's
// python3-keystone (Keystone 22) with its database in sqlite and fernet
// tokens, in a temporary directory, served by keystone-wsgi-public on a
// free loopback port. No systemd, no Apache, nothing outside the directory.
//
// A Keystone takes 15–35 s to come up (most of it Python starting
// keystone-manage twice), so a test package starts one and shares it
// (Shared); Start gives one test its own.
//
// What a started Keystone holds:
//   - Admin: the bootstrap user "admin", role admin in project "admin";
//   - Service: "nova", role service in project "service": what
//     [keystone_authtoken] names, allowed to validate other tokens;
//   - Demo: "demo", role member (which implies reader) in project "demo".
//
// All in domain "Default", with random passwords. Tokens live an hour
// (Keystone's default).
//
// Without python3-keystone a test fails when CI=true (make deps installs
// it) and is skipped elsewhere. A Keystone that is installed but does not
// come up always fails the test. The Keystone process is killed when the
// test process dies (on Linux).
package keystone

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Programs the package runs, from Debian's python3-keystone. Keystone's
// scripts name /usr/bin/python3 themselves, so a python3 earlier on PATH
// (a virtualenv) does not matter.
const (
	Manage     = "/usr/bin/keystone-manage"
	WSGIPublic = "/usr/bin/keystone-wsgi-public"
	Python     = "/usr/bin/python3"
)

// Bounds on the steps of Launch: safety nets far above what they take
// (db_sync and bootstrap about 6 s each, serving 6–9 s).
const (
	commandWithin = 2 * time.Minute
	readyWithin   = 2 * time.Minute
	stopWithin    = 30 * time.Second
	requestWithin = 30 * time.Second
)

// User is a Keystone user with a role in one project, in domain Default.
type User struct {
	Name, Password string
	// Project is the project the user's tokens are scoped to.
	Project string
	// ID and ProjectID are Keystone's ids of the user and the project.
	ID, ProjectID string
}

// Timings say how long Launch's steps took.
type Timings struct {
	// Setup is writing the configuration and keys, db_sync and bootstrap.
	Setup time.Duration
	// Serve is from starting keystone-wsgi-public to its first answer.
	Serve time.Duration
	// Users is creating the projects, roles and users.
	Users time.Duration
}

// Server is a Keystone in a child process. Its methods are safe for
// concurrent use.
type Server struct {
	// AuthURL is Keystone's root, http://127.0.0.1:PORT: what
	// [keystone_authtoken] auth_url takes. The v3 API is AuthURL+"/v3".
	AuthURL string
	Admin   User
	Service User
	Demo    User
	Timings Timings

	dir    string
	addr   string
	client *http.Client

	mu         sync.Mutex
	proc       *os.Process // nil while stopped
	done       chan error  // receives the process's exit
	adminToken string
}

// Installed reports why Keystone cannot run here, or nil.
func Installed() error {
	for _, p := range []string{Manage, WSGIPublic, Python} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s not found (Debian package python3-keystone; make deps installs it): %w", p, err)
		}
	}
	return nil
}

// Require fails t under CI=true and skips it elsewhere when Keystone is
// not installed: in CI a missing Keystone is a broken machine, never a
// reason to pass.
func Require(t testing.TB) {
	t.Helper()
	if err := Installed(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skipf("skipping Keystone test: %v", err)
	}
}

// Start launches a Keystone for t, stopped and removed in t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	Require(t)
	s, err := Launch(context.Background())
	if err != nil {
		t.Fatalf("keystone: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Shared is one Keystone for every test of a package that asks for it,
// launched on the first Get. The package stops it after its tests:
//
//	var ks keystone.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		ks.Close()
//		os.Exit(code)
//	}
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Get returns the shared Keystone, launching it on first use; it fails
// or skips t as Require and Start do.
func (sh *Shared) Get(t testing.TB) *Server {
	t.Helper()
	Require(t)
	sh.once.Do(func() { sh.srv, sh.err = Launch(context.Background()) })
	if sh.err != nil {
		t.Fatalf("keystone: %v", sh.err)
	}
	return sh.srv
}

// Close stops and removes the shared Keystone, if one was launched.
func (sh *Shared) Close() {
	if sh.srv != nil {
		sh.srv.Close()
	}
}

// Launch sets up and serves a Keystone in a new temporary directory; the
// caller Closes it. ctx bounds the whole start-up.
func Launch(ctx context.Context) (*Server, error) {
	if err := Installed(); err != nil {
		return nil, err
	}
	for i := 1; ; i++ {
		s, err := launchOnce(ctx)
		if !errors.Is(err, errPortTaken) || i == attempts {
			return s, err
		}
	}
}

// errPortTaken: something else listened on Keystone's port first.
var errPortTaken = errors.New("port taken")

func launchOnce(ctx context.Context) (*Server, error) {
	dir, err := os.MkdirTemp("", "vncgate-keystone-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, client: &http.Client{Timeout: requestWithin}}
	if err := s.launch(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// attempts is how many times Launch starts afresh when the port it chose
// was taken before Keystone listened on it.
const attempts = 3

func (s *Server) launch(ctx context.Context) error {
	t0 := time.Now()
	port, err := freePort()
	if err != nil {
		return err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.AuthURL = "http://" + s.addr
	s.Admin = User{Name: "admin", Password: randomHex(), Project: "admin"}
	if err := s.configure(); err != nil {
		return err
	}
	conf := filepath.Join(s.dir, "keystone.conf")
	if err := s.run(ctx, Manage, "--config-file", conf, "db_sync"); err != nil {
		return err
	}
	// Without WAL, Keystone's writes from two requests at once fail with
	// "database is locked".
	if err := s.run(ctx, Python, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('pragma journal_mode=wal')",
		filepath.Join(s.dir, "keystone.db")); err != nil {
		return err
	}
	endpoint := s.AuthURL + "/v3/"
	if err := s.run(ctx, Manage, "--config-file", conf, "bootstrap",
		"--bootstrap-password", s.Admin.Password, "--bootstrap-username", "admin",
		"--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
		"--bootstrap-service-name", "keystone", "--bootstrap-region-id", "RegionOne",
		"--bootstrap-admin-url", endpoint, "--bootstrap-public-url", endpoint, "--bootstrap-internal-url", endpoint); err != nil {
		return err
	}
	t1 := time.Now()
	s.Timings.Setup = t1.Sub(t0)
	if err := s.serve(ctx); err != nil {
		return err
	}
	t2 := time.Now()
	s.Timings.Serve = t2.Sub(t1)
	if err := s.createUsers(ctx); err != nil {
		return err
	}
	s.Timings.Users = time.Since(t2)
	return nil
}

// configure writes keystone.conf and the key repositories.
func (s *Server) configure() error {
	conf := fmt.Sprintf(`[database]
connection = sqlite:///%[1]s/keystone.db

[token]
provider = fernet

[fernet_tokens]
key_repository = %[1]s/fernet-keys

[fernet_receipts]
key_repository = %[1]s/receipt-keys

[credential]
key_repository = %[1]s/credential-keys

[identity]
# bcrypt's cheapest cost: users are created and authenticated in tests.
password_hash_rounds = 4

[cache]
# Without a cache one validation runs about 960 SQL queries (2 s); with
# it 30-60 ms, and revocations are still seen at once.
enabled = true
backend = dogpile.cache.memory
`, s.dir)
	if err := os.WriteFile(filepath.Join(s.dir, "keystone.conf"), []byte(conf), 0o600); err != nil {
		return err
	}
	// Keys written here rather than by keystone-manage fernet_setup and
	// credential_setup: two Python start-ups fewer. Key 0 is the staged
	// key, 1 the primary one; each is 32 random bytes, URL-safe base64.
	for _, d := range []string{"fernet-keys", "receipt-keys", "credential-keys"} {
		p := filepath.Join(s.dir, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		for _, name := range []string{"0", "1"} {
			key := make([]byte, 32)
			rand.Read(key)
			if err := os.WriteFile(filepath.Join(p, name), []byte(base64.URLEncoding.EncodeToString(key)), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// env is the environment of Keystone's processes: this one's, without
// what would point Python at other modules.
func (s *Server) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYTHONPATH=") && !strings.HasPrefix(kv, "PYTHONHOME=") && !strings.HasPrefix(kv, "OS_") {
			env = append(env, kv)
		}
	}
	return append(env, "OS_KEYSTONE_CONFIG_FILES="+filepath.Join(s.dir, "keystone.conf"))
}

// run runs one set-up command, its output going to setup.log.
func (s *Server) run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, commandWithin)
	defer cancel()
	logPath := filepath.Join(s.dir, "setup.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.dir, s.env(), log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Run(); err != nil {
		step := filepath.Base(name)
		if len(args) > 2 && name == Manage {
			step += " " + args[2]
		}
		return fmt.Errorf("%s: %w\n%s", step, err, tail(logPath))
	}
	return nil
}

// serve starts keystone-wsgi-public and waits until it answers GET /v3.
func (s *Server) serve(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("keystone is running")
	}
	logPath := filepath.Join(s.dir, "keystone.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	host, port, _ := net.SplitHostPort(s.addr)
	// The built-in server answers one request at a time: sqlite's objects
	// belong to one thread, so no multi-threaded server.
	cmd := exec.Command(WSGIPublic, "--host", host, "--port", port)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.dir, s.env(), log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", WSGIPublic, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := s.awaitReady(ctx, done); err != nil {
		cmd.Process.Kill()
		<-done
		log := tail(logPath)
		if strings.Contains(log, "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortTaken, err)
		}
		return fmt.Errorf("%w\n%s", err, log)
	}
	s.proc, s.done = cmd.Process, done
	return nil
}

// awaitReady polls GET /v3 until Keystone answers 200, the process ends,
// or readyWithin passes.
func (s *Server) awaitReady(ctx context.Context, done <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, readyWithin)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.AuthURL+"/v3", nil)
		if err != nil {
			return err
		}
		if resp, err := s.client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-done:
			return fmt.Errorf("keystone-wsgi-public on %s exited before answering: %v", s.addr, err)
		case <-ctx.Done():
			return fmt.Errorf("keystone-wsgi-public on %s: no answer to GET /v3: %w", s.addr, ctx.Err())
		case <-tick.C:
		}
	}
}

// Stop ends Keystone (SIGTERM) and returns once the process has exited, so
// its port is free; its data stays for Restart. It does nothing on a
// stopped server.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.proc.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopWithin): // a safety net: it stops at once
		s.proc.Kill()
		<-s.done
	}
	s.proc, s.done = nil, nil
}

// Restart serves the same Keystone again (same port, data and keys: tokens
// issued before still validate) after Stop.
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.serve(ctx)
}

// Close stops Keystone and removes its directory.
func (s *Server) Close() {
	s.Stop()
	os.RemoveAll(s.dir)
}

// IssueToken authenticates u with its password, scoped to its project,
// and returns the token.
func (s *Server) IssueToken(ctx context.Context, u User) (string, error) {
	tok, _, err := s.issue(ctx, u)
	return tok, err
}

// Token is IssueToken for a test.
func (s *Server) Token(t testing.TB, u User) string {
	t.Helper()
	tok, err := s.IssueToken(context.Background(), u)
	if err != nil {
		t.Fatalf("keystone: token for %s: %v", u.Name, err)
	}
	return tok
}

// RevokeToken revokes token (DELETE /v3/auth/tokens, as the admin).
func (s *Server) RevokeToken(ctx context.Context, token string) error {
	s.mu.Lock()
	admin := s.adminToken
	s.mu.Unlock()
	_, err := s.call(ctx, http.MethodDelete, "/v3/auth/tokens", admin, map[string]string{"X-Subject-Token": token}, nil, http.StatusNoContent, nil)
	return err
}

// Revoke is RevokeToken for a test.
func (s *Server) Revoke(t testing.TB, token string) {
	t.Helper()
	if err := s.RevokeToken(context.Background(), token); err != nil {
		t.Fatalf("keystone: revoke a token: %v", err)
	}
}

type idName struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// issued is the part of Keystone's answer to an authentication used here.
type issued struct {
	Token struct {
		User    idName `json:"user"`
		Project idName `json:"project"`
	} `json:"token"`
}

// issue is POST /v3/auth/tokens with u's password, scoped to u's project.
func (s *Server) issue(ctx context.Context, u User) (string, issued, error) {
	var req struct {
		Auth struct {
			Identity struct {
				Methods  []string `json:"methods"`
				Password struct {
					User struct {
						Name     string            `json:"name"`
						Domain   map[string]string `json:"domain"`
						Password string            `json:"password"`
					} `json:"user"`
				} `json:"password"`
			} `json:"identity"`
			Scope struct {
				Project struct {
					Name   string            `json:"name"`
					Domain map[string]string `json:"domain"`
				} `json:"project"`
			} `json:"scope"`
		} `json:"auth"`
	}
	req.Auth.Identity.Methods = []string{"password"}
	pu := &req.Auth.Identity.Password.User
	pu.Name, pu.Domain, pu.Password = u.Name, map[string]string{"id": "default"}, u.Password
	req.Auth.Scope.Project.Name, req.Auth.Scope.Project.Domain = u.Project, map[string]string{"id": "default"}
	var answer issued
	h, err := s.call(ctx, http.MethodPost, "/v3/auth/tokens?nocatalog", "", nil, req, http.StatusCreated, &answer)
	if err != nil {
		return "", issued{}, err
	}
	tok := h.Get("X-Subject-Token")
	if tok == "" {
		return "", issued{}, errors.New("no X-Subject-Token in Keystone's answer")
	}
	return tok, answer, nil
}

// createUsers makes the service and demo projects, the service role and
// the users nova and demo, as the admin.
func (s *Server) createUsers(ctx context.Context) error {
	admin, ids, err := s.issue(ctx, s.Admin)
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	s.mu.Lock()
	s.adminToken = admin
	s.mu.Unlock()
	s.Admin.ID, s.Admin.ProjectID = ids.Token.User.ID, ids.Token.Project.ID
	var roles struct {
		Roles []idName `json:"roles"`
	}
	if _, err := s.call(ctx, http.MethodGet, "/v3/roles?name=member", admin, nil, nil, http.StatusOK, &roles); err != nil || len(roles.Roles) != 1 {
		return fmt.Errorf("find role member (made by bootstrap): %v (%d found)", err, len(roles.Roles))
	}
	member := roles.Roles[0].ID
	var role struct {
		Role idName `json:"role"`
	}
	if _, err := s.call(ctx, http.MethodPost, "/v3/roles", admin, nil,
		map[string]any{"role": map[string]string{"name": "service"}}, http.StatusCreated, &role); err != nil {
		return fmt.Errorf("create role service: %w", err)
	}
	for _, spec := range []struct {
		user          *User
		name, project string
		role          string
	}{{&s.Service, "nova", "service", role.Role.ID}, {&s.Demo, "demo", "demo", member}} {
		u := User{Name: spec.name, Password: randomHex(), Project: spec.project}
		var p struct {
			Project idName `json:"project"`
		}
		if _, err := s.call(ctx, http.MethodPost, "/v3/projects", admin, nil,
			map[string]any{"project": map[string]string{"name": u.Project, "domain_id": "default"}}, http.StatusCreated, &p); err != nil {
			return fmt.Errorf("create project %s: %w", u.Project, err)
		}
		u.ProjectID = p.Project.ID
		var created struct {
			User idName `json:"user"`
		}
		if _, err := s.call(ctx, http.MethodPost, "/v3/users", admin, nil, map[string]any{"user": map[string]string{
			"name": u.Name, "password": u.Password, "domain_id": "default", "default_project_id": u.ProjectID,
		}}, http.StatusCreated, &created); err != nil {
			return fmt.Errorf("create user %s: %w", u.Name, err)
		}
		u.ID = created.User.ID
		path := "/v3/projects/" + u.ProjectID + "/users/" + u.ID + "/roles/" + spec.role
		if _, err := s.call(ctx, http.MethodPut, path, admin, nil, nil, http.StatusNoContent, nil); err != nil {
			return fmt.Errorf("give %s its role: %w", u.Name, err)
		}
		*spec.user = u
	}
	return nil
}

// call makes one request to Keystone's API and decodes a JSON answer with
// status want into out.
func (s *Server) call(ctx context.Context, method, path, token string, headers map[string]string, body any, want int, out any) (http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, requestWithin)
	defer cancel()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.AuthURL+path, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s, want %d: %.300s", method, strings.SplitN(path, "?", 2)[0], resp.Status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// freePort picks a loopback port free now, below the kernel's ephemeral
// range (32768 and up on Linux) so that no outgoing connection takes it in
// the seconds before Keystone listens, and below testkit/qemu's range.
func freePort() (int, error) {
	const lo, hi = 12000, 20000
	for range 50 {
		n, err := rand.Int(rand.Reader, big.NewInt(hi-lo))
		if err != nil {
			return 0, err
		}
		port := lo + int(n.Int64())
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port between %d and %d on 127.0.0.1", lo, hi)
}

func randomHex() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return path + " ends with:\n" + strings.Join(lines, "\n")
}
