package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/authn"
)

// loopback is the only address the benchmarks listen on and dial.
const loopback = "127.0.0.1"

// startStack runs the four services as processes for one sub-benchmark, with
// instances added to the agent's inventory. Service output goes to a file
// whose tail is logged if the benchmark fails: at 10,000 sessions the log is
// far too long for the benchmark's output.
func startStack(b *testing.B, instances ...devstack.Instance) *devstack.World {
	b.Helper()
	return startStackArgs(b, nil, instances...)
}

// logFile creates name in the benchmark's temporary folder for services'
// output and, if the benchmark fails, logs its last lines. Call it before
// starting what writes to it: its cleanup then runs after theirs.
func logFile(b *testing.B, name string, lines int) *os.File {
	b.Helper()
	path := filepath.Join(b.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		f.Close()
		if b.Failed() {
			b.Logf("warnings and errors in %s:\n%s", name, warnings(path, lines))
			b.Logf("last lines of %s:\n%s", name, tail(path, lines))
		}
	})
	return f
}

// startStackArgs is startStack with proxyArgs added to both proxies' flags.
func startStackArgs(b *testing.B, proxyArgs []string, instances ...devstack.Instance) *devstack.World {
	b.Helper()
	// Each service writes its own log file: copying their lines would cost
	// this process, which shares the CPUs with what it measures, more CPU
	// per session than the plain relay it is compared with.
	dir := b.TempDir()
	services := []string{devstack.ConsoleAuth, devstack.ComputeAgent, devstack.NoVNCProxy, devstack.XVPProxy}
	b.Cleanup(func() {
		if b.Failed() {
			for _, name := range services {
				b.Logf("warnings and errors in %s's log:\n%s", name, warnings(devstack.LogPath(dir, name), 30))
				b.Logf("last lines of %s's log:\n%s", name, tail(devstack.LogPath(dir, name), 15))
			}
		}
	})
	w := devstacktest.Start(b, devstack.Options{
		Dir:          dir,
		LogFilesOnly: true,
		Ports:        distinctPorts(b),
		Instances:    instances,
		Args: map[string][]string{
			// Sessions are closed by the benchmarks before the stack stops;
			// a short drain keeps a failed run from waiting 30 s on each.
			// 10,000 sessions come from 8 loopback addresses: no per-client cap.
			devstack.NoVNCProxy: append([]string{"--drain_timeout=5s", "--max_connections_per_client=0"}, proxyArgs...),
			devstack.XVPProxy:   append([]string{"--drain_timeout=5s", "--max_connections_per_client=0"}, proxyArgs...),
		},
	})
	// A service that died after its readiness check (or whose check was
	// answered by another process) would be measured as a failure of the
	// next one.
	for _, name := range services {
		p := w.Proc(name)
		if p == nil {
			b.Fatalf("%s was not started", name)
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid)); err != nil || strings.Contains(string(st), ") Z ") {
			b.Fatalf("%s (pid %d) is not running; last lines of its log:\n%s", name, p.Pid, tail(w.LogPath(name), 20))
		}
	}
	return w
}

// grpcAs is a gRPC connection to addr over mutual TLS, presenting a new
// certificate from the stack's CA speaking for role under name; closed
// when the benchmark ends.
func grpcAs(b *testing.B, w *devstack.World, addr string, role authn.Role, name string) *grpc.ClientConn {
	b.Helper()
	cfg, err := w.ClientTLS(role, name)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// distinctPorts picks the stack's ports holding every listener until all
// are picked: devstack picks one at a time, closing each at once, so the
// kernel may hand the same port out twice.
func distinctPorts(b *testing.B) devstack.Ports {
	b.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	port := func() int {
		l, err := net.Listen("tcp", loopback+":0")
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
		return l.Addr().(*net.TCPAddr).Port
	}
	return devstack.Ports{Etcd: port(), ConsoleAuthGRPC: port(), ConsoleAuthREST: port(), ComputeAgent: port(), NoVNC: port(), XVP: port()}
}

// instance is an inventory entry pointing at a VNC stand-in in this process.
func instance(uuid string, l net.Listener) devstack.Instance {
	return devstack.Instance{UUID: uuid, VNCHost: loopback, VNCPort: l.Addr().(*net.TCPAddr).Port, State: "running"}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// warnings returns the first n lines of the log at path that are at
// warning level or above: what went wrong is often long before the end.
func warnings(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for line := range strings.Lines(string(raw)) {
		if len(out) < n && (strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`)) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// listen opens a loopback listener closed when the benchmark ends.
func listen(b *testing.B) net.Listener {
	b.Helper()
	l, err := net.Listen("tcp", loopback+":0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// raiseFileLimit sets this process's open-file limit, soft and hard, to at
// least want (or to the hard limit when raising it is not permitted). An
// explicit Setrlimit also tells os/exec not to restore the original soft
// limit in children, so the services started afterwards inherit it.
func raiseFileLimit(want uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	hard := rl.Max
	if rl.Max < want {
		rl.Max = want
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		rl.Max, rl.Cur = hard, hard
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}

// procStatus reads numeric fields of /proc/PID/status, in kB for sizes.
func procStatus(pid int) (map[string]int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			out[name] = n
		}
	}
	return out, nil
}

// fdCount is the number of open files of a process.
func fdCount(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(entries)
}

// fileLimitOf is the soft open-file limit of a process, from /proc/PID/limits.
func fileLimitOf(pid int) string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			if f := strings.Fields(strings.TrimPrefix(line, "Max open files")); len(f) > 0 {
				return f[0]
			}
		}
	}
	return "?"
}

// connSet tracks the connections of a server in this process so that
// cleanup can close them.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// closeAll closes every tracked connection; with final, later ones too.
func (s *connSet) closeAll(final bool) {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.closed = s.closed || final
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// serve accepts on l until it closes, handling each connection on its own
// goroutine, and closes everything when the benchmark ends.
func serve(b *testing.B, l net.Listener, handle func(net.Conn)) *connSet {
	b.Helper()
	conns := &connSet{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !conns.add(c) {
				continue
			}
			wg.Go(func() {
				defer conns.remove(c)
				defer c.Close()
				handle(c)
			})
		}
	})
	b.Cleanup(func() {
		l.Close()
		conns.closeAll(true)
		wg.Wait()
	})
	return conns
}

// startPlainRelay is the baseline: a relay written the plain Go way, io.Copy
// both ways between two TCP sockets (the kernel splices), half-closing as
// the proxies do. It returns its address.
func startPlainRelay(b *testing.B, target string) string {
	b.Helper()
	l := listen(b)
	serve(b, l, func(c net.Conn) {
		s, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			return
		}
		defer s.Close()
		var wg sync.WaitGroup
		wg.Go(func() {
			io.Copy(s, c)
			s.(*net.TCPConn).CloseWrite()
		})
		io.Copy(c, s)
		c.(*net.TCPConn).CloseWrite()
		wg.Wait()
	})
	return l.Addr().String()
}

// websockify is a running websockify (Debian package), the proxy Nova's
// nova-novncproxy is built on.
type websockify struct {
	addr    string
	version string
	pid     int
}

// startWebsockify runs `websockify ADDR TARGET` until the benchmark ends.
// It returns an error, not a failure, when websockify is not installed.
func startWebsockify(b *testing.B, target string) (*websockify, error) {
	b.Helper()
	bin, err := exec.LookPath("websockify")
	if err != nil {
		return nil, fmt.Errorf("websockify not installed (make deps installs it)")
	}
	version := "websockify"
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "websockify").Output(); err == nil && len(out) > 0 {
		version = "websockify " + string(out)
	}
	l, err := net.Listen("tcp", loopback+":0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	logPath := filepath.Join(b.TempDir(), "websockify.log")
	logs, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, addr, target)
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group: websockify forks a child per connection, and
	// cleanup ends the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logs.Close()
		return nil, fmt.Errorf("start websockify: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logs.Close()
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			return nil, fmt.Errorf("websockify exited: %s", tail(logPath, 10))
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return &websockify{addr: addr, version: strings.TrimSpace(version), pid: cmd.Process.Pid}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("websockify not listening on %s after 15 s: %s", addr, tail(logPath, 10))
		}
	}
}

// rfbVersion is what an RFB 3.8 server sends first, and its client answers.
var rfbVersion = []byte("RFB 003.008\n")

// xvpOK is xvp-proxy's answer to a good CONNECT.
var xvpOK = []byte("HTTP/1.1 200 OK\r\n\r\n")

// xvpConnect sends the XVP request head on c and reads the 200.
func xvpConnect(c net.Conn, token string) error {
	if _, err := fmt.Fprintf(c, "CONNECT /console?token=%s HTTP/1.1\r\n\r\n", token); err != nil {
		return err
	}
	got := make([]byte, len(xvpOK))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("xvp answer %q: %w", got, err)
	}
	if !bytes.Equal(got, xvpOK) {
		more, _ := bufio.NewReader(io.LimitReader(c, 512)).ReadString(0)
		return fmt.Errorf("xvp answer: got %q, want %q", string(got)+more, xvpOK)
	}
	return nil
}

// rotatingDialer spreads client connections over several loopback source
// addresses (all of 127.0.0.0/8 is loopback), so that 10,000 clients plus
// their TIME_WAIT leftovers never run out of ephemeral ports.
type rotatingDialer struct {
	next atomic.Uint32
}

const clientAddrs = 8

func (r *rotatingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	i := r.next.Add(1)
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%clientAddrs))},
		Timeout:   10 * time.Second,
	}
	return d.DialContext(ctx, network, addr)
}

// median of xs (xs is sorted in place).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	if n := len(xs); n%2 == 0 {
		return (xs[n/2-1] + xs[n/2]) / 2
	}
	return xs[len(xs)/2]
}

// percentile is the nearest-rank percentile p (0 < p <= 100) of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	rank := int(float64(len(ds))*p/100+0.999999) - 1
	return ds[min(max(rank, 0), len(ds)-1)]
}

// clockTick is the unit of CPU times in /proc/PID/stat (USER_HZ, 100 on
// Linux).
const clockTick = 10 * time.Millisecond

// procCPU is the user and system CPU time of a process, its reaped children
// included and, with tree, its live descendants too.
func procCPU(pid int, tree bool) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: state is [0],
	// utime [11], stime [12], cutime [13], cstime [14].
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} {
		if i < len(f) {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
	}
	total := time.Duration(ticks) * clockTick
	if tree {
		for _, child := range childrenOf(pid) {
			total += procCPU(child, true)
		}
	}
	return total
}

// childrenOf lists a process's live children.
func childrenOf(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, t := range tasks {
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for field := range strings.FieldsSeq(string(raw)) {
			if n, err := strconv.Atoi(field); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
