package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/etcd"
)

const vm = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"

// world is a real consoleauth process on a real etcd, a CA, and an
// operator's certificate; proxies are played by the test through etcd, as
// the contract (registry/sessions.go) has them publish.
type world struct {
	cli      *clientv3.Client
	ca       *certs.CA
	grpcAddr string
	operator certs.Files
	dir      string
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// consoleauthBinary builds services/consoleauth once per test process.
func consoleauthBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vncgatectl-test-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "consoleauth")
		cmd := exec.Command("go", "build", "-o", binary, ".")
		cmd.Dir = filepath.Join("..", "..", "services", "consoleauth")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build consoleauth: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

func newWorld(t *testing.T) *world {
	t.Helper()
	bin := consoleauthBinary(t)
	srv, cli := etcd.Start(t)
	w := &world{cli: cli, ca: certs.TestCA(t), dir: t.TempDir()}
	files := func(name string, role authn.Role) certs.Files {
		f, err := w.ca.WriteIdentityFiles(filepath.Join(w.dir, name), certs.Identity{Name: name, Role: string(role)}, "127.0.0.1", "localhost")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	ca := files("consoleauth", authn.RoleConsoleAuth)
	w.operator = files("alice", authn.RoleOperator)

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--grpc_listen=127.0.0.1:0", "--rest_listen=127.0.0.1:0", "--admin_listen=",
		"--etcd_endpoints="+srv.Endpoint, "--etcd_timeout=2",
		"--grpc_cert="+ca.Cert, "--grpc_key="+ca.Key, "--grpc_ca="+ca.CA,
		"--rest_cert="+ca.Cert, "--rest_key="+ca.Key, "--rest_ca="+ca.CA, "--drain_timeout=40")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	// The ready line names the bound gRPC address; the rest of the log is
	// kept for a failing test.
	var logs bytes.Buffer
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var line struct {
				Msg  string `json:"msg"`
				GRPC string `json:"grpc"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "consoleauth ready" {
				ready <- line.GRPC
			}
		}
		close(ready)
	}()
	select {
	case addr, ok := <-ready:
		if !ok {
			t.Fatalf("consoleauth exited before it was ready:\n%s", logs.String())
		}
		w.grpcAddr = addr
	case <-time.After(60 * time.Second):
		t.Fatal("consoleauth not ready after 60 s")
	}
	// A compute agent's registration and its claim of the instance.
	put(t, cli, registry.ComputeKey("compute-1"), registry.Compute{Address: "127.0.0.1:6092"}, 0)
	put(t, cli, registry.ComputeInstanceKey("compute-1", vm), registry.Location{ComputeHost: "compute-1"}, 0)
	return w
}

func put(t *testing.T, cli *clientv3.Client, key string, v any, lease clientv3.LeaseID) {
	t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, string(b), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
}

// proxy publishes a proxy and its sessions, as a proxy does; with act, it
// ends each session whose kill key appears.
func (w *world) proxy(t *testing.T, name, consoleType string, sessions []string, act bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	lease, err := w.cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put(t, w.cli, registry.ProxyKey(name), registry.Proxy{Name: name, ConsoleType: consoleType, Address: "127.0.0.1:6080",
		Started: time.Date(2026, 11, 30, 17, 0, 0, 0, time.UTC)}, lease.ID)
	for _, id := range sessions {
		put(t, w.cli, registry.SessionKey(name, id), registry.LiveSession{ID: id, InstanceUUID: vm, Proxy: name,
			ConsoleType: consoleType, Client: "192.0.2.7", ComputeHost: "compute-1", Started: time.Now().UTC(),
			BytesToClient: 2048, BytesToServer: 12, Updated: time.Now().UTC(), MintedBy: "nova-api"}, lease.ID)
	}
	if !act {
		return
	}
	events := w.cli.Watch(ctx, registry.ProxyKillsPrefix(name), clientv3.WithPrefix(), clientv3.WithFilterDelete())
	go func() {
		for ev := range events {
			for _, e := range ev.Events {
				id := strings.TrimPrefix(string(e.Kv.Key), registry.ProxyKillsPrefix(name))
				_, _ = w.cli.Delete(ctx, registry.SessionKey(name, id))
			}
		}
	}()
}

// ctl runs vncgatectl with the operator's credentials in the environment
// and returns its exit code and output.
func (w *world) ctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	env := map[string]string{
		"VNCGATECTL_CONSOLEAUTH": w.grpcAddr,
		"VNCGATECTL_CA":          w.operator.CA,
		"VNCGATECTL_CERT":        w.operator.Cert,
		"VNCGATECTL_KEY":         w.operator.Key,
	}
	return ctlEnv(t, env, args...)
}

func ctlEnv(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errOut, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	w := newWorld(t)
	w.proxy(t, "novnc-1", "novnc", []string{"s1", "s2"}, true)
	w.proxy(t, "xvp-1", "xvpvnc", []string{"s3"}, false)

	t.Run("status table", func(t *testing.T) {
		code, out, errOut := w.ctl(t, "status")
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{"ETCD healthy, 1 member(s)", "compute-1", "127.0.0.1:6092", "novnc-1", "xvp-1", "SESSIONS 3 live"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("status json", func(t *testing.T) {
		code, out, errOut := w.ctl(t, "status", "-o", "json")
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var st struct {
			EtcdHealthy bool `json:"etcd_healthy"`
			Sessions    int  `json:"sessions"`
			Agents      []struct {
				Host      string `json:"host"`
				Instances int    `json:"instances"`
			} `json:"agents"`
			Proxies []struct {
				Name     string `json:"name"`
				Sessions int    `json:"sessions"`
			} `json:"proxies"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		if !st.EtcdHealthy || st.Sessions != 3 || len(st.Agents) != 1 || st.Agents[0].Instances != 1 ||
			len(st.Proxies) != 2 || st.Proxies[0].Name != "novnc-1" || st.Proxies[0].Sessions != 2 {
			t.Errorf("status -o json: got %+v", st)
		}
	})
	t.Run("sessions list", func(t *testing.T) {
		code, out, _ := w.ctl(t, "sessions", "list")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != ExitOK || len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") {
			t.Fatalf("exit %d, got:\n%s\nwant a header and 3 sessions", code, out)
		}
		for i, want := range []string{"s1  novnc-1", "s2  novnc-1", "s3  xvp-1"} {
			if !strings.HasPrefix(lines[i+1], want) || !strings.Contains(lines[i+1], "2.0 KiB") || !strings.Contains(lines[i+1], "nova-api") {
				t.Errorf("line %d: got %q, want %q… with its bytes and minter", i+1, lines[i+1], want)
			}
		}
		code, out, _ = w.ctl(t, "sessions", "list", "--proxy", "xvp-1", "-o", "json")
		var list struct {
			Sessions []struct {
				ID    string `json:"id"`
				Proxy string `json:"proxy"`
			} `json:"sessions"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil || code != ExitOK || len(list.Sessions) != 1 || list.Sessions[0].ID != "s3" {
			t.Errorf("sessions list --proxy xvp-1 -o json: exit %d, got %s (%v)", code, out, err)
		}
		code, out, _ = w.ctl(t, "sessions", "list", "--instance", "00000000-0000-4000-8000-000000000000")
		if code != ExitOK || strings.TrimSpace(out) != "no live sessions" {
			t.Errorf("sessions list of another instance: exit %d, got %q", code, out)
		}
	})
	t.Run("sessions kill", func(t *testing.T) {
		code, out, errOut := w.ctl(t, "sessions", "kill", "s1")
		if code != ExitOK || !strings.Contains(out, "session s1 on proxy novnc-1 ended") {
			t.Errorf("kill s1: exit %d, got %q %q", code, out, errOut)
		}
		// xvp-1 does not act: asked, not ended.
		code, _, errOut = w.ctl(t, "--timeout", "20s", "sessions", "kill", "s3", "--reason", "deleted")
		if code != ExitError || !strings.Contains(errOut, "had not ended") {
			t.Errorf("kill s3 (proxy not acting): exit %d, stderr %q; want %d, had not ended", code, errOut, ExitError)
		}
	})
	t.Run("tokens revoke", func(t *testing.T) {
		code, out, errOut := w.ctl(t, "tokens", "revoke", strings.ToUpper(vm), "-o", "json")
		// protojson varies its spacing on purpose: compare values, not bytes.
		var revoked struct {
			Count *int `json:"revoked_count"`
		}
		if err := json.Unmarshal([]byte(out), &revoked); err != nil || code != ExitOK || revoked.Count == nil || *revoked.Count != 0 {
			t.Errorf("tokens revoke: exit %d, got %q %q (%v)", code, out, errOut, err)
		}
	})
	t.Run("proxy drain", func(t *testing.T) {
		code, out, errOut := w.ctl(t, "proxy", "drain", "novnc-1", "--deadline", "90s")
		if code != ExitOK || !strings.Contains(out, "proxy novnc-1 draining: its 1 live session(s) end at") {
			t.Errorf("drain: exit %d, got %q %q", code, out, errOut)
		}
		code, out, _ = w.ctl(t, "proxy", "drain", "xvp-1", "-o", "json")
		var d struct {
			Deadline time.Time `json:"deadline"`
		}
		if err := json.Unmarshal([]byte(out), &d); code != ExitOK || err != nil || time.Until(d.Deadline) < 30*time.Second {
			t.Errorf("drain with consoleauth's drain_timeout (40 s): exit %d, got %s (%v)", code, out, err)
		}
		_, out, _ = w.ctl(t, "status")
		if !strings.Contains(out, "draining until") {
			t.Errorf("status after drains lacks the draining state:\n%s", out)
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown session", []string{"sessions", "kill", "nope"}, ExitNotFound, "no live session nope"},
		{"unknown proxy", []string{"proxy", "drain", "nope"}, ExitNotFound, "no live proxy nope"},
		{"free-text reason", []string{"sessions", "kill", "s2", "--reason", "I said so"}, ExitUsage, "unknown reason"},
		{"bad instance", []string{"tokens", "revoke", "vm-1"}, ExitUsage, "instance: want 36 characters"},
		{"bad deadline", []string{"proxy", "drain", "novnc-1", "--deadline", "1.5s"}, ExitUsage, "whole seconds"},
		{"no argument", []string{"sessions", "kill"}, ExitUsage, "want exactly one argument"},
		{"unknown flag", []string{"status", "--bogus"}, ExitUsage, "unknown flag"},
		{"unknown command", []string{"restart"}, ExitUsage, "unknown command"},
		{"bad output", []string{"status", "-o", "yaml"}, ExitUsage, "want table or json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := w.ctl(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.msg) {
				t.Errorf("%v: exit %d, stderr %q; want %d with %q", tc.args, code, errOut, tc.code, tc.msg)
			}
		})
	}
}

// Credentials consoleauth refuses, and a consoleauth that is not there.
func TestRefusedAndUnavailable(t *testing.T) {
	w := newWorld(t)
	api, err := w.ca.WriteIdentityFiles(filepath.Join(w.dir, "nova-api"), certs.Identity{Name: "nova-api", Role: string(authn.RoleAPI)}, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"VNCGATECTL_CONSOLEAUTH": w.grpcAddr, "VNCGATECTL_CA": api.CA, "VNCGATECTL_CERT": api.Cert, "VNCGATECTL_KEY": api.Key}
	code, _, errOut := ctlEnv(t, env, "status")
	if code != ExitDenied || !strings.Contains(errOut, "role api may not call GetStatus") {
		t.Errorf("status as the API layer: exit %d, stderr %q; want %d, role api refused", code, errOut, ExitDenied)
	}

	// A port nothing listens on (consoleauth's, once it stopped).
	env = map[string]string{"VNCGATECTL_CONSOLEAUTH": "127.0.0.1:1", "VNCGATECTL_CA": w.operator.CA,
		"VNCGATECTL_CERT": w.operator.Cert, "VNCGATECTL_KEY": w.operator.Key, "VNCGATECTL_TIMEOUT": "20s"}
	code, _, errOut = ctlEnv(t, env, "status")
	if code != ExitUnavailable {
		t.Errorf("status with consoleauth down: exit %d, stderr %q; want %d", code, errOut, ExitUnavailable)
	}
	// Two endpoints, the first down: the call goes to the live one.
	env["VNCGATECTL_CONSOLEAUTH"] = "127.0.0.1:1," + w.grpcAddr
	if code, _, errOut = ctlEnv(t, env, "status"); code != ExitOK {
		t.Errorf("status with one of two endpoints down: exit %d, stderr %q", code, errOut)
	}
}

// Flags beat the environment, which beats the settings file; paths in the
// file are relative to it; unknown keys are refused.
func TestSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "vncgatectl.conf")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("consoleauth = \"ca-1:6090, ca-2:6090\"\nca = \"tls/ca.pem\"\ncert = \"/etc/op.pem\"\nkey = \"/etc/op-key.pem\"\noutput = \"json\"\n")
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want settings
	}{
		{"file", nil, []string{"--config", file},
			settings{ConsoleAuth: "ca-1:6090, ca-2:6090", CA: filepath.Join(dir, "tls/ca.pem"), Cert: "/etc/op.pem", Key: "/etc/op-key.pem", Output: "json", Timeout: "10s"}},
		{"file from env", map[string]string{"VNCGATECTL_CONFIG": file}, nil,
			settings{ConsoleAuth: "ca-1:6090, ca-2:6090", CA: filepath.Join(dir, "tls/ca.pem"), Cert: "/etc/op.pem", Key: "/etc/op-key.pem", Output: "json", Timeout: "10s"}},
		{"env over file", map[string]string{"VNCGATECTL_CONSOLEAUTH": "ca-3:6090", "VNCGATECTL_OUTPUT": "table"}, []string{"--config", file},
			settings{ConsoleAuth: "ca-3:6090", CA: filepath.Join(dir, "tls/ca.pem"), Cert: "/etc/op.pem", Key: "/etc/op-key.pem", Output: "table", Timeout: "10s"}},
		{"flag over env", map[string]string{"VNCGATECTL_CONSOLEAUTH": "ca-3:6090"}, []string{"--config", file, "--consoleauth", "ca-4:6090", "-o", "table"},
			settings{ConsoleAuth: "ca-4:6090", CA: filepath.Join(dir, "tls/ca.pem"), Cert: "/etc/op.pem", Key: "/etc/op-key.pem", Output: "table", Timeout: "10s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &app{lookupEnv: func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }}
			root := a.root()
			if err := root.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			if err := resolve(root.Flags(), &a.settings, a.config, a.lookupEnv); err != nil {
				t.Fatal(err)
			}
			if a.settings != tc.want {
				t.Errorf("got %+v, want %+v", a.settings, tc.want)
			}
		})
	}

	write("consoleauth = \"ca-1:6090\"\ncertificate = \"/etc/op.pem\"\n")
	code, _, errOut := ctlEnv(t, nil, "--config", file, "status")
	if code != ExitUsage || !strings.Contains(errOut, `unknown setting "certificate"`) {
		t.Errorf("unknown key: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = ctlEnv(t, nil, "--config", filepath.Join(dir, "missing.conf"), "status")
	if code != ExitUsage || !strings.Contains(errOut, "settings file") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = ctlEnv(t, map[string]string{"VNCGATECTL_CA": "/x", "VNCGATECTL_CERT": "/y"}, "status", "--consoleauth", "a:1,,b:2")
	if code != ExitUsage || !strings.Contains(errOut, "empty") {
		t.Errorf("bad address list: exit %d, stderr %q", code, errOut)
	}
}

// The completion command writes a script for each shell.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		code, out, errOut := ctlEnv(t, nil, "completion", shell)
		if code != ExitOK || !strings.Contains(out, "vncgatectl") {
			t.Errorf("completion %s: exit %d, stderr %q", shell, code, errOut)
		}
	}
	_, out, _ := ctlEnv(t, nil, "__complete", "sessions", "kill", "x", "--reason", "")
	if !strings.Contains(out, "admin") || !strings.Contains(out, "deleted") {
		t.Errorf("completion of --reason: got %q, want the reason codes", out)
	}
}
