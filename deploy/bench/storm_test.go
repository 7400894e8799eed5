package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	testetcd "github.com/vncgate/vncgate/testkit/etcd"
)

const (
	stormUUID      = "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d"
	stormWant      = 10_000           // sessions, as many as the open-file limits allow
	stormOpenBy    = 3 * time.Minute  // opening them before the restart takes at most this
	stormBackBy    = 60 * time.Second // all reconnects end (done or failed) within this
	stormDrain     = 1                // the proxy's drain_timeout in seconds
	stormHandshake = 10 * time.Second // the proxy's handshake_timeout (its default), passed explicitly
)

// stormResult is one reconnect storm against xvp-proxy.
type stormResult struct {
	want, sessions int
	limitNote      string
	fileLimit      uint64
	openTime       time.Duration // opening the sessions before the restart
	restart        time.Duration // SIGTERM to the new process accepting
	allBack        time.Duration // from the release to the last reconnect done
	p50, p99       time.Duration // per-client reconnect time
	failures       int
	failureKinds   map[string]int // failures by what the client saw (failureKind)
	failureSamples []string
	// cpu is the CPU time each process spent from the release to the
	// last reconnect, divided by the sessions: what one reconnect costs,
	// whatever else the machine runs at the time.
	cpu []processCPU
	// logLines are the most frequent warnings of consoleauth and of the
	// proxy, kept when some reconnects failed: why they failed.
	logLines []string
}

// benchStorm opens as many xvp sessions as the file limits allow (up to
// stormWant) through an xvp-proxy run here beside a stack, restarts the
// proxy on the same port (SIGTERM with shutdown_delay 0 and a drain_timeout
// of stormDrain s, then a new process), waits until every client saw its
// session end, and then lets every client reconnect with its token at
// once. It reports how long until all are back and how many failed.
func benchStorm(b *testing.B, limit uint64) *stormResult {
	hold := startHoldServer(b)
	// etcd in a process of its own: devstack's embedded one would share
	// this process's CPU with the clients of the storm.
	_, cli := testetcd.Start(b)
	w := startClusterStack(b, cli, instance(stormUUID, hold.l))
	token, err := devstack.TokenOf(consoleURL(b, w, stormUUID, "xvpvnc"))
	if err != nil {
		b.Fatal(err)
	}
	// Each session holds a client socket and the hold server's socket in
	// this process, and two sockets in the proxy: both processes have the
	// same limit.
	res := &stormResult{want: stormWant, fileLimit: limit}
	room := (int(limit) - fdCount(os.Getpid()) - 2*fdMargin) / 2
	res.sessions = min(stormWant, room/100*100)
	if res.sessions < stormWant {
		res.limitNote = fmt.Sprintf("the open-file limit of %d (this process and the proxy: 2 files per session each) allows %s",
			limit, thousands(res.sessions))
	}
	if res.sessions <= 0 {
		b.Fatalf("open-file limit %d leaves no room for sessions", limit)
	}

	logs := logFile(b, "xvp-storm.log", 40)
	l, a := listen(b), listen(b)
	port, adminPort := l.Addr().(*net.TCPAddr).Port, a.Addr().(*net.TCPAddr).Port
	l.Close()
	a.Close()
	addr := net.JoinHostPort(loopback, strconv.Itoa(port))
	args := append([]string{
		"--xvpvncproxy_host=" + loopback,
		"--xvpvncproxy_port=" + strconv.Itoa(port),
		"--consoleauth_address=" + w.Addr(w.Ports.ConsoleAuthGRPC),
		"--etcd_endpoints=" + strings.Join(cli.Endpoints(), ","),
		"--admin_listen=" + net.JoinHostPort(loopback, strconv.Itoa(adminPort)),
		"--shutdown_delay=0",
		fmt.Sprintf("--drain_timeout=%d", stormDrain),
		fmt.Sprintf("--handshake_timeout=%d", int(stormHandshake.Seconds())),
		// All clients come from 8 loopback addresses: no per-client cap,
		// and no cap on the listener below the sessions.
		"--max_connections_per_client=0",
		"--max_connections=0",
	}, w.GRPCFlags(devstack.XVPProxy)...)
	proxy := startService(b, devstack.XVPProxy, logs, args)
	if err := waitAccepting(addr, 30*time.Second); err != nil {
		b.Fatalf("storm proxy: %v", err)
	}

	dialer := &rotatingDialer{}
	connect := func(ctx context.Context) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		err = xvpConnect(c, token)
		if err == nil {
			err = readVersion(c)
		}
		if err == nil {
			_, err = c.Write(rfbVersion)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}

	// Open the sessions, idleWorkers at a time.
	conns := make([]net.Conn, res.sessions)
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	start := time.Now()
	openCtx, cancelOpen := context.WithTimeout(context.Background(), stormOpenBy)
	defer cancelOpen()
	var next atomic.Int64
	var openErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range idleWorkers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < res.sessions; i = int(next.Add(1)) - 1 {
				cctx, cancel := context.WithTimeout(openCtx, 30*time.Second)
				c, err := connect(cctx)
				cancel()
				if err != nil {
					once.Do(func() { openErr = fmt.Errorf("session %d: %w", i, err) })
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if openErr != nil {
		b.Fatalf("opening %s sessions before the restart: %v", thousands(res.sessions), openErr)
	}
	res.openTime = time.Since(start)

	// Every client waits for its session to end: the proxy's drain closes it.
	ended := make(chan int, res.sessions)
	for i, c := range conns {
		go func() {
			var one [1]byte
			c.Read(one[:])
			ended <- i
		}()
	}
	restartAt := time.Now()
	if err := proxy.stop(stormDrain*time.Second + 30*time.Second); err != nil {
		b.Fatalf("storm proxy on SIGTERM: %v", err)
	}
	startService(b, devstack.XVPProxy, logs, args) // stopped when the benchmark ends
	if err := waitAccepting(addr, 30*time.Second); err != nil {
		b.Fatalf("storm proxy after the restart: %v", err)
	}
	res.restart = time.Since(restartAt)
	endBy := time.After(30 * time.Second)
	for range res.sessions {
		select {
		case i := <-ended:
			conns[i].Close()
			conns[i] = nil
		case <-endBy:
			b.Fatalf("sessions still open 30 s after the proxy that carried them exited")
		}
	}

	// The storm: every client reconnects at once.
	times := make([]time.Duration, res.sessions)
	errs := make([]error, res.sessions)
	release := make(chan struct{})
	var ready sync.WaitGroup
	ready.Add(res.sessions)
	for i := range res.sessions {
		wg.Go(func() {
			ready.Done()
			<-release
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), stormBackBy)
			defer cancel()
			c, err := connect(ctx)
			if err != nil {
				errs[i] = err
				return
			}
			times[i] = time.Since(t0)
			conns[i] = c
		})
	}
	ready.Wait()
	if dir := os.Getenv("STORM_PROFILE_DIR"); dir != "" {
		profileStorm(b, dir, map[string]string{
			"xvp-proxy":   net.JoinHostPort(loopback, strconv.Itoa(adminPort)),
			"consoleauth": w.AdminAddr(w.Ports.ConsoleAuthAdmin),
		})
	}
	cpuBefore, selfBefore := childCPU(), selfCPU()
	t0 := time.Now()
	close(release)
	wg.Wait()
	res.allBack = time.Since(t0)
	res.cpu = cpuPerSession(cpuBefore, childCPU(), selfCPU()-selfBefore, res.sessions)

	var ok []time.Duration
	seen := map[string]bool{}
	for i, err := range errs {
		if err == nil {
			ok = append(ok, times[i])
			continue
		}
		res.failures++
		if res.failureKinds == nil {
			res.failureKinds = map[string]int{}
		}
		res.failureKinds[failureKind(err)]++
		var ne net.Error
		msg := err.Error()
		if errors.As(err, &ne) && ne.Timeout() {
			msg = "timeout: " + msg
		}
		if len(res.failureSamples) < 3 && !seen[msg] {
			seen[msg] = true
			res.failureSamples = append(res.failureSamples, msg)
		}
	}
	slices.Sort(ok)
	res.p50, res.p99 = percentile(ok, 50), percentile(ok, 99)
	if len(ok) > 0 {
		res.allBack = ok[len(ok)-1]
	}
	if res.failures > 0 {
		for _, path := range []string{w.LogPath(devstack.ConsoleAuth), logs.Name()} {
			res.logLines = append(res.logLines, topWarnings(path, 4)...)
		}
	}
	b.ReportMetric(float64(res.allBack)/1e6, "storm-all-back-ms")
	b.ReportMetric(float64(res.failures), "storm-failures")
	return res
}

// stormProfileTime is how long the CPU profiles of STORM_PROFILE_DIR run.
const stormProfileTime = 8 * time.Second

// profileStorm fetches a CPU profile of each of admins (name -> admin
// listener address) from now on, for the storm's first stormProfileTime,
// into dir/storm-NAME.pprof (go tool pprof): where a reconnect's time goes.
// It returns at once; the benchmark's end waits for the profiles.
func profileStorm(b *testing.B, dir string, admins map[string]string) {
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait)
	for name, addr := range admins {
		wg.Go(func() {
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(stormProfileTime.Seconds()))
			resp, err := http.Get(url)
			if err != nil {
				b.Logf("profile of %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			path := filepath.Join(dir, "storm-"+name+".pprof")
			f, err := os.Create(path)
			if err == nil {
				_, err = io.Copy(f, resp.Body)
				f.Close()
			}
			b.Logf("profile of %s: %s (%v)", name, path, err)
		})
	}
}

// failureKind sorts a failed reconnect by what its client saw.
func failureKind(err error) string {
	var ne net.Error
	msg := err.Error()
	switch {
	case strings.Contains(msg, "HTTP/1.1 503"):
		return "503 console service unavailable"
	case strings.Contains(msg, "HTTP/1.1 502"):
		return "502 console server unreachable"
	case strings.Contains(msg, "HTTP/1.1 408"):
		return "408 request timeout (no head in time)"
	case errors.As(err, &ne) && ne.Timeout():
		return "client timeout"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "closed without an answer"
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET):
		return "connection refused or reset"
	}
	return "other"
}

// processCPU is one process's CPU time per reconnect.
type processCPU struct {
	name       string
	perSession time.Duration
}

// childCPU is the CPU time of each live child process of this one (the
// services and etcd), its descendants included, by command name.
func childCPU() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, pid := range childrenOf(os.Getpid()) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		out[strings.TrimSpace(string(comm))] += procCPU(pid, true)
	}
	return out
}

// cpuPerSession is each process's CPU time between two childCPU readings,
// and this process's self, per session, the largest first.
func cpuPerSession(before, after map[string]time.Duration, self time.Duration, sessions int) []processCPU {
	out := []processCPU{{name: "this process (clients, VNC stand-in)", perSession: self / time.Duration(sessions)}}
	for name, t := range after {
		if d := t - before[name]; d > 0 {
			out = append(out, processCPU{name: name, perSession: d / time.Duration(sessions)})
		}
	}
	slices.SortFunc(out, func(a, b processCPU) int { return int(b.perSession - a.perSession) })
	return out
}

// cpuBoundRate is the reconnects per second this machine's CPUs could
// do with nothing else running: the inverse of the CPU time of one, all
// processes together.
func (r *stormResult) cpuBoundRate() float64 {
	var total time.Duration
	for _, c := range r.cpu {
		total += c.perSession
	}
	if total <= 0 {
		return 0
	}
	return float64(runtime.NumCPU()) * float64(time.Second) / float64(total)
}

// cpuBoundTime is how long the storm's sessions take at cpuBoundRate.
func (r *stormResult) cpuBoundTime() time.Duration {
	if rate := r.cpuBoundRate(); rate > 0 {
		return time.Duration(float64(r.sessions) / rate * float64(time.Second))
	}
	return 0
}

// topWarnings are the n most frequent kinds of WARN and ERROR lines, and
// of refusals at any level, of a JSON log (by message, reason and error,
// the error cut at 160 bytes), each with its count: why the failed
// reconnects failed.
func topWarnings(path string, n int) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	counts := map[string]int{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		var rec struct{ Level, Msg, Reason, Error string }
		if json.Unmarshal([]byte(line), &rec) != nil || (rec.Level != "WARN" && rec.Level != "ERROR" && rec.Msg != "console refused") {
			continue
		}
		key := rec.Msg
		if rec.Reason != "" {
			key += " (" + rec.Reason + ")"
		}
		if rec.Error != "" {
			key += ": " + rec.Error[:min(len(rec.Error), 160)]
		}
		counts[key]++
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return counts[b] - counts[a] })
	var out []string
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, fmt.Sprintf("%s: %d x %s", filepath.Base(path), counts[k], k))
	}
	return out
}

// waitAccepting waits until addr accepts TCP connections.
func waitAccepting(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting after %v: %w", addr, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *stormResult) printStorm(p func(string, ...any)) {
	p("   %s sessions (of %s wanted) opened in %v; proxy restart (SIGTERM, drain, exit, new process accepting): %v.\n",
		thousands(r.sessions), thousands(r.want), r.openTime.Round(100*time.Millisecond), r.restart.Round(time.Millisecond))
	if r.limitNote != "" {
		p("   Fewer than %s: %s.\n", thousands(r.want), r.limitNote)
	}
	p("   All %s clients released at once: %s back (200 and the first RFB byte), the last after %s; per client p50 %s, p99 %s.\n",
		thousands(r.sessions), thousands(r.sessions-r.failures), ms(r.allBack), ms(r.p50), ms(r.p99))
	p("   Failures: %d of %s (target none: queue within the %v handshake timeout): %s.\n", r.failures, thousands(r.sessions),
		stormHandshake, verdict(r.failures == 0))
	kinds := slices.Sorted(maps.Keys(r.failureKinds))
	for _, k := range kinds {
		p("     %s: %d\n", k, r.failureKinds[k])
	}
	if len(r.cpu) > 0 {
		var total time.Duration
		parts := make([]string, len(r.cpu))
		for i, c := range r.cpu {
			total += c.perSession
			parts[i] = fmt.Sprintf("%s %.2f", c.name, float64(c.perSession)/1e6)
		}
		p("   CPU per reconnect, ms: %s; in all %.2f ms, so %d CPUs do at most %s reconnects/s (%s in %.1f s) with nothing else running.\n",
			strings.Join(parts, ", "), float64(total)/1e6, runtime.NumCPU(), thousands(int(r.cpuBoundRate())),
			thousands(r.sessions), r.cpuBoundTime().Seconds())
		if back := r.sessions - r.failures; back > 0 && r.allBack > 0 {
			rate := float64(back) / r.allBack.Seconds()
			p("   This run: %s reconnects/s, %.0f%% of that: the rest of the CPUs went to other work (see the load average).\n",
				thousands(int(rate)), 100*rate/r.cpuBoundRate())
		}
	}
	for _, s := range r.failureSamples {
		p("     e.g. %q\n", s)
	}
	for _, l := range r.logLines {
		p("     log %s\n", l)
	}
}
