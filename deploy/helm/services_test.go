package helm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
)

// downward are the values the kubelet would give the downward API fields
// the chart uses.
var downward = map[string]string{"spec.nodeName": "compute-1", "status.hostIP": "192.0.2.7"}

// TestServicesAcceptRenderedConfig runs each service's real binary on the
// configuration the chart renders for it, with the container's arguments
// and environment, and reads what its loader (pkg/config, with the
// service's own options and checks) made of it. No service has a
// check-the-configuration-and-exit flag, so the proof is the process
// itself: a refused file ends it with status 2 and the reason; an accepted
// one is logged ("configuration files read", with the count of options it
// ignored), after which the service starts, and here stops at once on its
// first certificate, which the test pod lacks. Each runs in a network
// namespace of its own, so it neither binds nor dials anything of this
// machine's.
func TestServicesAcceptRenderedConfig(t *testing.T) {
	bin := devstacktest.Binaries(t)
	for _, overlay := range []string{"minimal", "everything", "small"} {
		t.Run(overlay, func(t *testing.T) {
			for _, w := range workloads(t, render(t, overlay)) {
				t.Run(w.component, func(t *testing.T) {
					t.Parallel()
					checkAccepted(t, filepath.Join(bin, w.component), w)
				})
			}
		})
	}
}

// runService runs a workload's binary as its pod would, on its rendered
// configuration, and returns its exit status and log.
func runService(t *testing.T, binary string, w workload) (status int, log string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "vncgate.conf")
	if err := os.WriteFile(file, []byte(w.conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, a := range w.container["args"].([]any) {
		args = append(args, strings.ReplaceAll(a.(string), "/etc/vncgate/vncgate.conf", file))
	}
	if !strings.Contains(strings.Join(args, " "), file) {
		t.Fatalf("container args %v do not name the mounted configuration", args)
	}
	// [DEFAULT] debug: the loader's summary is a debug line; log_level in
	// the file is still read and checked.
	args = append(args, "--debug")
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	for _, e := range list(w.container["env"]) {
		name := e["name"].(string)
		if v, ok := e["value"].(string); ok {
			env = append(env, name+"="+v)
			continue
		}
		path, _, _ := unstructured.NestedString(e, "valueFrom", "fieldRef", "fieldPath")
		v, ok := downward[path]
		if !ok {
			t.Fatalf("env %s: downward API field %q has no test value", name, path)
		}
		env = append(env, name+"="+v)
	}

	// The deadline only bounds a hang: every service ends by itself on
	// its missing certificate.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	cmd.SysProcAttr = isolatedNetwork()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), stderr.String()
	case err != nil:
		t.Fatalf("%s: %v", binary, err)
	}
	return 0, stderr.String()
}

// checkAccepted runs a workload and checks its service took every option.
// TestServicesRefuseWhatTheyDoNotRead proves the check above can fail: an
// option no service knows ends the service with status 2, and an option
// of another service is counted as ignored.
func TestServicesRefuseWhatTheyDoNotRead(t *testing.T) {
	bin := devstacktest.Binaries(t)
	var v map[string]any
	if err := yaml.Unmarshal([]byte(overlays["minimal"]+`
novncProxy: {config: {vncgate: {drain_timout: 30}}}
xvpProxy: {config: {vncgate: {rest_listen: "0.0.0.0:6091"}}}
`), &v); err != nil {
		t.Fatal(err)
	}
	objs, err := Render("vncgate", v, release)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range workloads(t, objs) {
		switch w.component {
		case "novnc-proxy":
			status, log := runService(t, filepath.Join(bin, w.component), w)
			if status != 2 || !strings.Contains(log, "unknown option [vncgate] drain_timout") || !strings.Contains(log, "did you mean drain_timeout?") {
				t.Errorf("novnc-proxy with a misspelt option: exit status %d, log %q; want 2 and the option named", status, log)
			}
		case "xvp-proxy":
			status, log := runService(t, filepath.Join(bin, w.component), w)
			rec, found := logRecord{}, false
			for _, line := range strings.Split(log, "\n") {
				if r, ok := parseLogLine(line); ok && r.msg == "configuration files read" {
					rec, found = r, true
				}
			}
			if status == 2 || !found || rec.ignoredOptions != "1" {
				t.Errorf("xvp-proxy with consoleauth's rest_listen: exit status %d, %+v; want the option counted as ignored\n%s", status, rec, log)
			}
		}
	}
}

func checkAccepted(t *testing.T, binary string, w workload) {
	status, log := runService(t, binary, w)
	if status == 2 {
		t.Fatalf("%s refused the rendered configuration: %s\n%s", w.component, strings.TrimSpace(log), w.conf)
	}
	var read logRecord
	found := false
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		rec, ok := parseLogLine(sc.Text())
		if !ok {
			continue
		}
		if rec.msg == "configuration files read" {
			read, found = rec, true
		}
		// Unsupported or deprecated options, or a setting the service
		// thinks unwise: the chart should not write what it warns about.
		if rec.level == "WARN" || rec.level == "ERROR" && !strings.HasSuffix(rec.msg, " stopped") {
			t.Errorf("%s: %s", w.component, sc.Text())
		}
	}
	if !found {
		t.Fatalf("%s (exit status %d) never said it read its configuration:\n%s", w.component, status, log)
	}
	// Every option the chart writes is one this service reads.
	if read.ignoredOptions != "0" {
		t.Errorf("%s ignored %s options of its rendered configuration:\n%s", w.component, read.ignoredOptions, w.conf)
	}
	if read.ignoredSections != "" {
		t.Errorf("%s read nothing from sections %s", w.component, read.ignoredSections)
	}
	// It went on to start: it stopped on a file of its mounted volumes
	// (which the test does not have), not on its options.
	if !strings.Contains(log, "/etc/vncgate/") {
		t.Errorf("%s did not get as far as opening its mounted files:\n%s", w.component, log)
	}
}

// isolatedNetwork starts a child in a new network namespace (only a
// loopback, down): as root directly, otherwise inside a user namespace.
func isolatedNetwork() *syscall.SysProcAttr {
	if os.Geteuid() == 0 {
		return &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	return &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}},
	}
}

// logRecord is what the test reads of a log line.
type logRecord struct{ level, msg, ignoredOptions, ignoredSections string }

var textField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S*)`)

// parseLogLine reads a line of either log_format (pkg/logging: slog's JSON
// or text handler).
func parseLogLine(line string) (logRecord, bool) {
	if strings.HasPrefix(line, "{") {
		var rec struct {
			Level, Msg      string
			IgnoredOptions  json.Number `json:"ignored_options"`
			IgnoredSections []string    `json:"ignored_sections"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			return logRecord{}, false
		}
		return logRecord{rec.Level, rec.Msg, rec.IgnoredOptions.String(), strings.Join(rec.IgnoredSections, ",")}, true
	}
	fields := map[string]string{}
	for _, m := range textField.FindAllStringSubmatch(line, -1) {
		v := m[2]
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		}
		fields[m[1]] = v
	}
	if fields["msg"] == "" {
		return logRecord{}, false
	}
	return logRecord{fields["level"], fields["msg"], fields["ignored_options"], strings.Trim(fields["ignored_sections"], "[]")}, true
}
