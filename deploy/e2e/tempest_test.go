package e2e

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/testkit/wsclose"
)

// tempestPython is the interpreter Debian's python3-tempest is installed
// for; a python3 earlier on PATH (pyenv) does not see it.
const tempestPython = "/usr/bin/python3"

// tempestTests are the tempest tests a cloud's console is certified with,
// as module.Class.method, each run at every microversion of
// tempestMicroversions.
var tempestTests = []string{
	"tempest.api.compute.servers.test_novnc.NoVNCConsoleTestJSON.test_novnc",
	"tempest.api.compute.servers.test_novnc.NoVNCConsoleTestJSON.test_novnc_bad_token",
	"tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON.test_get_vnc_console",
}

// tempestMicroversions: 2.1 asks with os-getVNCConsole, 2.6 with
// remote-consoles.
var tempestMicroversions = []string{"2.1", "2.6"}

// tempestRun is what tempest/run_tempest.py writes.
type tempestRun struct {
	TempestVersion string `json:"tempest_version"`
	Microversion   string `json:"microversion"`
	Results        []struct {
		Test         string `json:"test"`
		Microversion string `json:"microversion"`
		Outcome      string `json:"outcome"`
		Detail       string `json:"detail"`
		Source       string `json:"source"`
	} `json:"results"`
}

// TestTempestConsoleTests runs OpenStack tempest's own console tests
// (Debian's python3-tempest, unchanged) against the devstack world: the
// runner tempest/run_tempest.py supplies what Keystone and Nova would (the
// compute endpoint is consoleauth's REST API, the server is the demo VM)
// and runs tempest's test methods. Every test must pass at every
// microversion; a skipped one fails.
func TestTempestConsoleTests(t *testing.T) {
	requireNoVNCLibrary(t)
	err := exec.Command(tempestPython, "-c", "import tempest").Run()
	requireTool(t, err == nil, "OpenStack tempest missing: "+tempestPython+" cannot import tempest (Debian package python3-tempest)")

	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.XVPProxy: true}})
	for _, mv := range tempestMicroversions {
		t.Run("microversion "+mv, func(t *testing.T) {
			run := runTempest(t, w, mv)
			got := map[string]int{}
			for i, r := range run.Results {
				got[r.Test] = i
			}
			for _, name := range tempestTests {
				t.Run(name[strings.LastIndex(name, ".")+1:], func(t *testing.T) {
					i, ok := got[name]
					if !ok {
						t.Fatalf("%s: not in the runner's results", name)
					}
					r := run.Results[i]
					if !strings.Contains(r.Source, "/tempest/api/compute/servers/") {
						t.Errorf("%s ran code from %s, want tempest's own", name, r.Source)
					}
					if r.Microversion != mv {
						t.Errorf("%s ran at microversion %q, want %s", name, r.Microversion, mv)
					}
					if r.Outcome != "pass" {
						t.Errorf("tempest %s at microversion %s: got %s, want pass\n%s", name, mv, r.Outcome, r.Detail)
					}
				})
			}
		})
	}

	// Nova's clients above get Nova's refusal (no close frame); a browser
	// sending the same bad token, with the Origin every browser sends,
	// still gets the close code and reason its page turns into a sentence.
	t.Run("a browser still reads why", func(t *testing.T) {
		consoleURL := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
		u, err := url.Parse(consoleURL)
		if err != nil {
			t.Fatal(err)
		}
		// The request tempest's test_novnc_bad_token makes, plus Origin.
		wsURL := "ws://" + u.Host + "/?token=bad" + url.QueryEscape(tokenOf(t, consoleURL))
		ce := wsclose.Read(t, novncDial(t, wsURL, "http://"+u.Host))
		if ce.Code != novncTokenInvalid || ce.Reason == "" {
			t.Fatalf("browser refused with close %d %q, want %d with a reason", ce.Code, ce.Reason, novncTokenInvalid)
		}
	})
}

// runTempest runs the runner at microversion mv against w and returns its
// results. The runner's own output goes to the test log.
func runTempest(t *testing.T, w *devstack.World, mv string) tempestRun {
	t.Helper()
	dir := t.TempDir()
	result := filepath.Join(dir, "result.json")
	// A guard against a hang only (a tempest test blocks on a socket read
	// without a timeout): OS_TEST_TIMEOUT gives each test its own, so a
	// hung test fails with its name rather than taking the runner down.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tempestPython, "tempest/run_tempest.py",
		"--compute-url", w.RESTURL()+"/v2.1",
		"--server-id", devstack.DemoUUID,
		"--microversion", mv,
		"--result", result,
		"--work-dir", dir,
	)
	cmd.Env = append(os.Environ(), "OS_TEST_TIMEOUT=120", "PYTHONDONTWRITEBYTECODE=1", "VNCGATE_API_KEY="+w.APIKey)
	out, err := cmd.CombinedOutput()
	t.Logf("tempest runner at microversion %s (%v):\n%s", mv, err, out)
	b, rerr := os.ReadFile(result)
	if rerr != nil {
		t.Fatalf("tempest runner wrote no result (%v): %v", err, rerr)
	}
	var run tempestRun
	if err := json.Unmarshal(b, &run); err != nil {
		t.Fatalf("tempest runner's result: %v\n%s", err, b)
	}
	t.Logf("tempest %s, microversion %s", run.TempestVersion, run.Microversion)
	return run
}
