package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure is the highest `systemd-analyze security` exposure each unit
// may have (0 is best, 10 worst; under 5 is "OK"). Measured on systemd 252:
// 1.1, and 1.3 for compute-agent, which keeps the host's user namespace
// and the libvirt group for libvirt's sockets. The old units scored 8.3.
var maxExposure = map[string]float64{
	"consoleauth":   1.2,
	"compute-agent": 1.4,
	"novnc-proxy":   1.2,
	"xvp-proxy":     1.2,
}

// need skips the test without tool, or fails it under CI, where make deps
// installs it (systemd comes with libvirt-daemon-system).
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	why := tool + " not found: install Debian's systemd package"
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
	return ""
}

// unit is the [Service] section of a unit file: each key's values in order.
type unit map[string][]string

func readUnit(t *testing.T, name string) unit {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is no Key=Value", name, line)
			}
			u[k] = append(u[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) last(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// services are the four services, from the folder's unit files.
func services(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("vncgate-*.service")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(strings.TrimPrefix(f, "vncgate-"), ".service"))
	}
	if len(names) != len(maxExposure) {
		t.Fatalf("unit files for %v, want one for each of %v", names, maxExposure)
	}
	return names
}

// TestUnitsVerify runs `systemd-analyze verify` on each unit in a scratch
// root holding the system's own units (which ours refer to) and a stand-in
// for every program a unit runs; verify says nothing about a good unit.
func TestUnitsVerify(t *testing.T) {
	analyze := need(t, "systemd-analyze")
	const systemUnits = "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(systemUnits, "multi-user.target")); err != nil {
		t.Fatalf("systemd-analyze without systemd's own units: %v", err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr", "lib", "systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", systemUnits, filepath.Join(root, "usr", "lib", "systemd")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	etc := filepath.Join(root, "etc", "systemd", "system")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range services(t) {
		name := "vncgate-" + s + ".service"
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		for key, values := range readUnit(t, name) {
			if !strings.HasPrefix(key, "Exec") {
				continue
			}
			for _, v := range values {
				prog := strings.TrimLeft(strings.Fields(v)[0], "-@+!:")
				stub := filepath.Join(root, prog)
				if err := os.MkdirAll(filepath.Dir(stub), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, s := range services(t) {
		name := "vncgate-" + s + ".service"
		out, err := exec.Command(analyze, "verify", "--root="+root, name).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

var overall = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`)

// TestUnitsSecurity holds each unit's exposure score under its bound.
func TestUnitsSecurity(t *testing.T) {
	analyze := need(t, "systemd-analyze")
	if out, _ := exec.Command(analyze, "--help").Output(); !strings.Contains(string(out), "--offline") {
		t.Fatalf("%s has no --offline (systemd 250 or later needed)", analyze)
	}
	for _, s := range services(t) {
		name := "vncgate-" + s + ".service"
		out, err := exec.Command(analyze, "security", "--offline=yes", "--no-pager", "./"+name).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
		}
		m := overall.FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: no overall exposure level in\n%s", name, out)
		}
		score, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: exposure %.1f %s", name, score, m[2])
		if score > maxExposure[s] {
			t.Errorf("%s: exposure %.1f %s, want at most %.1f:\n%s", name, score, m[2], maxExposure[s], out)
		}
	}
}

// TestUnitsUserAndReload checks every unit runs as the sysusers.d user and
// has ExecReload exactly when its service reloads on SIGHUP (a service
// without a SIGHUP handler would die of the signal).
func TestUnitsUserAndReload(t *testing.T) {
	for _, s := range services(t) {
		name := "vncgate-" + s + ".service"
		u := readUnit(t, name)
		if u.last("User") != "vncgate" || u.last("Group") != "vncgate" {
			t.Errorf("%s: User=%s Group=%s, want vncgate (vncgate.conf)", name, u.last("User"), u.last("Group"))
		}
		if got, want := u.last("ExecStart"), "/usr/local/bin/"+s+" "; !strings.HasPrefix(got, want) {
			t.Errorf("%s: ExecStart=%s, want it to start with %q", name, got, want)
		}
		hup := handlesSIGHUP(t, s)
		switch reload := u.last("ExecReload"); {
		case hup && reload != "/bin/kill -HUP $MAINPID":
			t.Errorf("%s: %s reloads on SIGHUP: want ExecReload=/bin/kill -HUP $MAINPID, got %q", name, s, reload)
		case !hup && reload != "":
			t.Errorf("%s: %s has no SIGHUP handler, so ExecReload=%s would kill it", name, s, reload)
		}
	}
}

// handlesSIGHUP tells whether the service's main package asks for SIGHUP.
func handlesSIGHUP(t *testing.T, service string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "services", service, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files of %s: %v", service, err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "syscall.SIGHUP") {
			return true
		}
	}
	return false
}

// TestSysusers creates the user from vncgate.conf in a scratch root.
func TestSysusers(t *testing.T) {
	sysusers := need(t, "systemd-sysusers")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-sysusers --root needs root")
		}
		t.Skip("systemd-sysusers --root needs root")
	}
	b, err := os.ReadFile("vncgate.conf")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "usr", "lib", "sysusers.d")
	for _, d := range []string{dir, filepath.Join(root, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "vncgate.conf"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Without a warning: sysusers reports a bad line and goes on.
	if out, err := exec.Command(sysusers, "--root="+root).CombinedOutput(); err != nil || strings.Contains(string(out), "vncgate.conf:") {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile(filepath.Join(root, "etc", "group"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^vncgate:x:(\d+):(\d+):[^:]*:/:/usr/sbin/nologin$`).FindSubmatch(passwd)
	if m == nil {
		t.Fatalf("/etc/passwd has no vncgate system user with no login:\n%s", passwd)
	}
	uid, _ := strconv.Atoi(string(m[1]))
	if uid <= 0 || uid >= 1000 {
		t.Errorf("vncgate uid %d, want a system one (1 to 999)", uid)
	}
	if !regexp.MustCompile(`(?m)^vncgate:x:` + string(m[2]) + `:$`).Match(group) {
		t.Errorf("/etc/group has no vncgate group of gid %s:\n%s", m[2], group)
	}
}
