// Package devstacktest starts a devstack for a test: it builds the service
// binaries once per test process and tears the stack down in t.Cleanup.
package devstacktest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/testkit/testlog"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// RepoRoot is the repository's root folder (the one holding go.work).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory")
		}
		dir = parent
	}
}

// Binaries builds the four services and vncgatectl (once per process) and
// returns their folder.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, buildErr = os.MkdirTemp("", "vncgate-bin-")
		if buildErr != nil {
			return
		}
		// As make build does: in the repository's workspace, even from a
		// module tested on its own (GOWORK=off, deploy/helm).
		build := func(name, dir string) error {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", name, err, out)
			}
			return nil
		}
		for _, s := range []string{devstack.ConsoleAuth, devstack.ComputeAgent, devstack.NoVNCProxy, devstack.XVPProxy} {
			if buildErr = build(s, filepath.Join(root, "services", s)); buildErr != nil {
				return
			}
		}
		// The operator's CLI, which tests drive as an operator would.
		buildErr = build(devstack.VNCGateCtl, filepath.Join(root, "cmd", "vncgatectl"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Start runs a stack on free loopback ports for the test. Service output goes
// to the test log when the test fails or runs with -v.
func Start(t testing.TB, opts devstack.Options) *devstack.World {
	t.Helper()
	opts.Bin = Binaries(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	logs := testlog.New(t)
	if opts.Logs == nil {
		opts.Logs = logs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := devstack.Start(ctx, opts)
	if err != nil {
		t.Fatalf("devstack: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Stop(); err != nil {
			t.Errorf("devstack stop: %v", err)
		}
	})
	return w
}
