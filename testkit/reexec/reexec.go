// Package reexec runs a service's real main in a child process of its test
// binary, for tests whose subject is the process: its open-file limit, its
// exit, its log. The child is the test binary itself, re-executed with an
// environment variable that makes TestMain call the service's main instead
// of the tests, optionally under a lower RLIMIT_NOFILE. Its JSON log lines
// (stderr) are collected and can be waited for.
package reexec

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nofileEnv carries the child's open-file limit.
const nofileEnv = "VNCGATE_REEXEC_NOFILE"

// Main runs main and exits when this process is a child started with env
// set; otherwise it returns at once. Call it first in TestMain.
func Main(env string, main func()) {
	if os.Getenv(env) == "" {
		return
	}
	if n, err := strconv.ParseUint(os.Getenv(nofileEnv), 10, 64); err == nil && n > 0 {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
			lim.Cur = min(n, lim.Max)
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				os.Stderr.WriteString("reexec: setrlimit: " + err.Error() + "\n")
				os.Exit(3)
			}
		}
	}
	main()
	os.Exit(0)
}

// Child is a running child process.
type Child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its log is read
	err  error         // Wait's, once done is closed

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line
}

// Start runs the test binary as a child with env=1 and args (the service's
// flags), with at most nofile open files when nofile > 0. The child is
// killed, if still running, when t ends.
func Start(t testing.TB, env string, nofile int, args ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env+"=1", nofileEnv+"="+strconv.Itoa(nofile))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Child{cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		}
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("child %s log:\n%s", env, c.Log())
		}
	})
	return c
}

// Log is everything the child logged so far.
func (c *Child) Log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// Count is how many log lines have message msg.
func (c *Child) Count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.lines {
		if fields(l)["msg"] == msg {
			n++
		}
	}
	return n
}

// WaitLog waits (at most timeout, a bound for a hang) for the first log
// line with message msg and returns its fields. It fails the test if the
// child exits first.
func (c *Child) WaitLog(t testing.TB, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for seen := 0; ; {
		c.mu.Lock()
		lines, changed := c.lines[seen:], c.changed
		seen = len(c.lines)
		c.mu.Unlock()
		for _, l := range lines {
			if f := fields(l); f["msg"] == msg {
				return f
			}
		}
		select {
		case <-changed:
		case <-c.done:
			c.mu.Lock()
			more := len(c.lines) > seen
			c.mu.Unlock()
			if !more {
				t.Fatalf("child exited (%v) before logging %q", c.err, msg)
			}
		case <-deadline.C:
			t.Fatalf("child did not log %q within %s", msg, timeout)
		}
	}
}

// Stop sends SIGTERM and waits (at most timeout) for the child to exit,
// returning its exit error.
func (c *Child) Stop(t testing.TB, timeout time.Duration) error {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.err
	case <-time.After(timeout):
		t.Fatalf("child still running %s after SIGTERM", timeout)
		return nil
	}
}

// Signal sends sig to the child and returns at once (Stop waits).
func (c *Child) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Wait waits (at most timeout, a bound for a hang) for the child to exit
// and returns its exit error.
func (c *Child) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(timeout):
		t.Fatalf("child still running after %s", timeout)
		return nil
	}
}

// fields parses a JSON log line; other lines have none.
func fields(line string) map[string]any {
	var f map[string]any
	if json.Unmarshal([]byte(line), &f) != nil {
		return nil
	}
	return f
}
