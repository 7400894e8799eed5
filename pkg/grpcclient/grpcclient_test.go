package grpcclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/loopback"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// checkToken is the retried method of these tests; GetConsoleURL is not.
var checkToken = []string{consoleauthv1.ConsoleAuthService_CheckToken_FullMethodName}

// replica is one server of the callee on loopback, over TLS, with a
// health service; CheckToken answers with the replica's name as host, so
// a test sees who served each call.
type replica struct {
	consoleauthv1.UnimplementedConsoleAuthServiceServer
	name  string
	addr  string
	creds credentials.TransportCredentials

	calls       atomic.Int64
	unavailable atomic.Bool // answer UNAVAILABLE, as a replica without etcd

	mu     sync.Mutex
	srv    *grpc.Server
	health *health.Server
}

// startReplica serves a replica named name on addr ("127.0.0.1:0" for any
// port) with cert, until t ends.
func startReplica(t *testing.T, name, addr string, cert tls.Certificate) *replica {
	t.Helper()
	r := &replica{name: name, addr: addr, creds: credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

// start listens on r.addr (again, after stop; port 0: one that stays
// free for the restart) and serves, its health SERVING.
func (r *replica) start(t *testing.T) { r.startHealth(t, true) }

// startHealth is start with the health status SERVING or NOT_SERVING from
// the first call on.
func (r *replica) startHealth(t *testing.T, serving bool) {
	t.Helper()
	var l net.Listener
	if ip, port, _ := net.SplitHostPort(r.addr); port == "0" {
		l = loopback.ListenRestartable(t, ip)
	} else {
		var err error
		if l, err = net.Listen("tcp", r.addr); err != nil {
			t.Fatalf("replica %s: %v", r.name, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addr = l.Addr().String()
	r.srv = grpc.NewServer(append(ServerOptions(), grpc.Creds(r.creds))...)
	r.health = health.NewServer()
	if !serving {
		r.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	consoleauthv1.RegisterConsoleAuthServiceServer(r.srv, r)
	healthpb.RegisterHealthServer(r.srv, r.health)
	srv := r.srv
	go srv.Serve(l)
}

// stop kills the replica: its port closes and every connection and call
// on it is cut, as when its process dies.
func (r *replica) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv.Stop()
}

func (r *replica) setServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.health.SetServingStatus("", st)
}

func (r *replica) CheckToken(context.Context, *consoleauthv1.CheckTokenRequest) (*consoleauthv1.CheckTokenResponse, error) {
	r.calls.Add(1)
	if r.unavailable.Load() {
		return nil, status.Error(codes.Unavailable, "etcd unavailable at "+r.name)
	}
	return &consoleauthv1.CheckTokenResponse{ConnectInfo: &consoleauthv1.ConnectInfo{Host: r.name}}, nil
}

func (r *replica) GetConsoleURL(context.Context, *consoleauthv1.GetConsoleURLRequest) (*consoleauthv1.GetConsoleURLResponse, error) {
	r.calls.Add(1)
	if r.unavailable.Load() {
		return nil, status.Error(codes.Unavailable, "etcd unavailable at "+r.name)
	}
	return &consoleauthv1.GetConsoleURLResponse{}, nil
}

// pki is a CA, the server certificate every replica presents and the
// client's credentials trusting the CA.
type pki struct {
	server tls.Certificate
	client credentials.TransportCredentials
}

func newPKI(t *testing.T, hosts ...string) pki {
	t.Helper()
	ca := certs.TestCA(t)
	cert, err := ca.IssueIdentity(certs.Identity{Name: "replica", Role: "consoleauth"}, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return pki{server: cert, client: credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})}
}

// dial dials value with opts (Name "consoleauth", CheckToken retried,
// unless set) and closes the connection when t ends.
func dial(t *testing.T, value string, creds credentials.TransportCredentials, opts Options) (*grpc.ClientConn, consoleauthv1.ConsoleAuthServiceClient) {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "consoleauth"
	}
	if opts.Retry == nil {
		opts.Retry = checkToken
	}
	cc, err := Dial("consoleauth_address", value, creds, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, consoleauthv1.NewConsoleAuthServiceClient(cc)
}

// check makes one CheckToken call and returns who answered.
func check(client consoleauthv1.ConsoleAuthServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: "t", ConsoleType: "novnc"})
	return resp.GetConnectInfo().GetHost(), err
}

// until calls check until cond holds for who answered, or fails after
// the bound (which only stops a hang).
func until(t *testing.T, what string, client consoleauthv1.ConsoleAuthServiceClient, cond func(who string, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		who, err := check(client)
		if cond(who, err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s (last answer %q, %v)", what, who, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitState waits for cc to reach want.
func waitState(t *testing.T, cc *grpc.ClientConn, want connectivity.State) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for s := cc.GetState(); s != want; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatalf("connection state: still %v after 20s, want %v", s, want)
		}
	}
}

// loopbackPort returns a port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3,
// for replicas that one DNS name resolves to.
func loopbackPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		free := true
		for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.1-3")
	return 0
}

// hosts is a LookupHost whose answers a test changes.
type hosts struct {
	mu      sync.Mutex
	answers map[string][]string
	lookups atomic.Int64
}

func (h *hosts) set(name string, ips ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.answers == nil {
		h.answers = map[string][]string{}
	}
	h.answers[name] = ips
}

func (h *hosts) LookupHost(_ context.Context, name string) ([]string, error) {
	h.lookups.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	ips, ok := h.answers[name]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return append([]string(nil), ips...), nil
}

// TestRoundRobinOverEveryAddressOfEveryEndpoint: a DNS name resolving to
// three addresses and an IP address are four replicas, and calls go to
// each in turn; every certificate is checked against the name written in
// the option.
func TestRoundRobinOverEveryAddressOfEveryEndpoint(t *testing.T) {
	p := newPKI(t, "replicas.test", "127.0.0.4")
	port := loopbackPort(t)
	var replicas []*replica
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		replicas = append(replicas, startReplica(t, "dns-"+ip, net.JoinHostPort(ip, strconv.Itoa(port)), p.server))
	}
	replicas = append(replicas, startReplica(t, "ip", "127.0.0.4:0", p.server))
	h := &hosts{}
	h.set("replicas.test", "127.0.0.1", "127.0.0.2", "127.0.0.3")
	value := fmt.Sprintf("replicas.test:%d, %s", port, replicas[3].addr)
	cc, client := dial(t, value, p.client, Options{LookupHost: h.LookupHost})

	waitState(t, cc, connectivity.Ready)
	// Round robin starts once every address is connected or failed.
	until(t, "every replica in the rotation", client, func(string, error) bool {
		for _, r := range replicas {
			if r.calls.Load() == 0 {
				return false
			}
		}
		return true
	})
	counts := map[string]int{}
	for range 40 {
		who, err := check(client)
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		counts[who]++
	}
	for _, r := range replicas {
		if counts[r.name] != 10 {
			t.Errorf("calls to %s: got %d of 40, want 10 (round robin over 4): %v", r.name, counts[r.name], counts)
		}
	}
}

// TestCertificateCheckedAgainstTheWrittenName: an entry "localhost" (the
// system's resolver) reaches a replica whose certificate names only
// localhost, not its address; a certificate for another name is refused.
func TestCertificateCheckedAgainstTheWrittenName(t *testing.T) {
	good := newPKI(t, "localhost")
	r := startReplica(t, "local", "127.0.0.1:0", good.server)
	_, port, _ := net.SplitHostPort(r.addr)
	_, client := dial(t, "localhost:"+port, good.client, Options{})
	if who, err := check(client); err != nil || who != "local" {
		t.Fatalf("check through localhost:%s: got %q, %v; want an answer from the replica", port, who, err)
	}

	other := newPKI(t, "elsewhere.test")
	impostor := startReplica(t, "impostor", "127.0.0.1:0", other.server)
	_, client = dial(t, impostor.addr, other.client, Options{})
	if _, err := check(client); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("check against a certificate for elsewhere.test: got %v, want UNAVAILABLE naming the certificate", err)
	}
	if impostor.calls.Load() != 0 {
		t.Error("the impostor got a call")
	}
}

// TestNotServingGetsNoCalls: a replica whose health says NOT_SERVING is
// left out of the rotation until it says SERVING again.
func TestNotServingGetsNoCalls(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	_, client := dial(t, a.addr+","+b.addr, p.client, Options{})
	until(t, "both replicas used", client, func(string, error) bool { return a.calls.Load() > 0 && b.calls.Load() > 0 })

	a.setServing(false)
	// Round robin alternates, so 20 answers from b in a row mean a is out.
	inARow := 0
	until(t, "a out of the rotation", client, func(who string, err error) bool {
		if err != nil {
			t.Fatalf("check while a stops serving: %v", err)
		}
		if who == "b" {
			inARow++
		} else {
			inARow = 0
		}
		return inARow == 20
	})
	before := a.calls.Load()
	for range 50 {
		if who, err := check(client); err != nil || who != "b" {
			t.Fatalf("check with a not serving: got %q, %v; want b", who, err)
		}
	}
	if a.calls.Load() != before {
		t.Errorf("a got %d calls while NOT_SERVING, want 0", a.calls.Load()-before)
	}

	a.setServing(true)
	until(t, "a back in the rotation", client, func(who string, _ error) bool { return who == "a" })
}

// TestRetriedOnAnotherReplica: a replica answering UNAVAILABLE (its etcd is
// gone, say) costs a retried method nothing; a method not listed as
// idempotent is not retried; when every replica fails, retries stop.
func TestRetriedOnAnotherReplica(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	_, client := dial(t, a.addr+","+b.addr, p.client, Options{})
	until(t, "both replicas used", client, func(string, error) bool { return a.calls.Load() > 0 && b.calls.Load() > 0 })

	a.unavailable.Store(true)
	before := a.calls.Load()
	// More calls than retry throttling's 50 tokens: one bad replica of
	// two does not turn retries off.
	for i := range 120 {
		if who, err := check(client); err != nil || who != "b" {
			t.Fatalf("check %d with a answering UNAVAILABLE: got %q, %v; want b's answer", i, who, err)
		}
	}
	if a.calls.Load() == before {
		t.Fatal("a got no call: the test proves nothing")
	}

	failed := 0
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{})
		cancel()
		if status.Code(err) == codes.Unavailable {
			failed++
		}
	}
	if failed == 0 {
		t.Error("GetConsoleURL never failed: a method not listed in Retry was retried")
	}

	// Both failing: retries stop after some 50 failures, so 100 checks
	// cost far fewer than MaxAttempts calls each.
	b.unavailable.Store(true)
	before = a.calls.Load() + b.calls.Load()
	for range 100 {
		if _, err := check(client); status.Code(err) != codes.Unavailable {
			t.Fatalf("check with both answering UNAVAILABLE: got %v, want UNAVAILABLE", err)
		}
	}
	if calls := a.calls.Load() + b.calls.Load() - before; calls > 200 {
		t.Errorf("100 checks against two failing replicas cost %d calls, want retries throttled (at most 200)", calls)
	}
}

// TestRetryGoesToAnotherReplica: under concurrent calls, a retry goes to a
// replica the call has not tried (plain round robin shares its rotation
// among calls, so a retry would often land on the failing replica again):
// with one of three replicas answering UNAVAILABLE, 300 checks from 8
// callers all succeed.
func TestRetryGoesToAnotherReplica(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	c := startReplica(t, "c", "127.0.0.1:0", p.server)
	_, client := dial(t, a.addr+","+b.addr+","+c.addr, p.client, Options{})
	until(t, "every replica used", client, func(string, error) bool {
		return a.calls.Load() > 0 && b.calls.Load() > 0 && c.calls.Load() > 0
	})
	a.unavailable.Store(true)
	var next, failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= 300 {
				if _, err := check(client); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of 300 checks failed, want 0; first: %v", failed.Load(), first.Load())
	}
}

// TestKillAndRestartAReplica: 200 checks from 4 callers while one of two
// replicas is killed: none fails. The killed one restarts on its port and
// serves again; then the other is killed, and still none fails.
func TestKillAndRestartAReplica(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	logs := &testlog.Buffer{}
	cc, client := dial(t, a.addr+","+b.addr, p.client, Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
	until(t, "both replicas used", client, func(string, error) bool { return a.calls.Load() > 0 && b.calls.Load() > 0 })

	load := func(kill func()) {
		t.Helper()
		const callers, total = 4, 200
		var next, failed atomic.Int64
		var firstErr atomic.Value
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for n := next.Add(1); n <= total; n = next.Add(1) {
					if n == total/4 {
						kill()
					}
					if _, err := check(client); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				}
			})
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Errorf("%d of %d checks failed around the kill, want 0; first: %v", failed.Load(), total, firstErr.Load())
		}
	}
	load(a.stop)
	if !Ready(cc) {
		t.Error("Ready: got false with b up")
	}

	a.start(t)
	until(t, "a serving again after its restart", client, func(who string, _ error) bool { return who == "a" })
	load(b.stop)
	if who, err := check(client); err != nil || who != "a" {
		t.Errorf("check with only a up: got %q, %v; want a", who, err)
	}
	if strings.Contains(logs.String(), "unreachable") {
		t.Errorf("logged unreachable while a replica was up:\n%s", logs)
	}
}

// TestReadyFollowsTheReplicas: Ready is false while no replica is up (one
// log line), true once one is (one log line), and calls fail fast and
// clearly in between.
func TestReadyFollowsTheReplicas(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	a := startReplica(t, "a", "127.0.0.1:0", p.server)
	b := startReplica(t, "b", "127.0.0.1:0", p.server)
	logs := &testlog.Buffer{}
	cc, client := dial(t, a.addr+","+b.addr, p.client, Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
	waitState(t, cc, connectivity.Ready)
	if !Ready(cc) {
		t.Fatal("Ready: got false with both replicas up")
	}

	a.stop()
	b.stop()
	waitState(t, cc, connectivity.TransientFailure)
	if Ready(cc) {
		t.Error("Ready: got true with both replicas down")
	}
	if _, err := check(client); status.Code(err) != codes.Unavailable {
		t.Errorf("check with both down: got %v, want UNAVAILABLE", err)
	}

	b.startHealth(t, false) // b restarts, but its etcd is not there yet
	// b connects but says NOT_SERVING: still not ready.
	until(t, "b connected", client, func(_ string, err error) bool {
		return err != nil && strings.Contains(err.Error(), "health check failed")
	})
	if Ready(cc) {
		t.Error("Ready: got true with b NOT_SERVING")
	}
	b.setServing(true)
	waitState(t, cc, connectivity.Ready)
	if who, err := check(client); err != nil || who != "b" {
		t.Errorf("check after b serves: got %q, %v; want b", who, err)
	}
	if n := strings.Count(logs.String(), "consoleauth unreachable"); n != 1 {
		t.Errorf("unreachable logged %d times, want once:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), "consoleauth reachable"); n != 2 {
		t.Errorf("reachable logged %d times, want twice (at start, after b serves):\n%s", n, logs)
	}
}

// TestNamesResolvedAgain: a DNS name is looked up again: a new address is
// used, one that left is dropped, and a failed lookup keeps the last
// addresses (logged once).
func TestNamesResolvedAgain(t *testing.T) {
	p := newPKI(t, "replicas.test")
	port := loopbackPort(t)
	one := startReplica(t, "one", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), p.server)
	startReplica(t, "two", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)), p.server)
	h := &hosts{}
	h.set("replicas.test", "127.0.0.1")
	logs := &testlog.Buffer{}
	_, client := dial(t, fmt.Sprintf("replicas.test:%d", port), p.client,
		Options{LookupHost: h.LookupHost, ResolveInterval: 10 * time.Millisecond, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if who, err := check(client); err != nil || who != "one" {
		t.Fatalf("check: got %q, %v; want one", who, err)
	}

	h.set("replicas.test", "127.0.0.2")
	until(t, "the new address used", client, func(who string, _ error) bool { return who == "two" })
	until(t, "the old address dropped", client, func(string, error) bool {
		before := one.calls.Load()
		for range 10 {
			if _, err := check(client); err != nil {
				return false
			}
		}
		return one.calls.Load() == before
	})

	h.mu.Lock()
	delete(h.answers, "replicas.test")
	h.mu.Unlock()
	for n := h.lookups.Load(); h.lookups.Load() < n+3; {
		time.Sleep(5 * time.Millisecond) // a few failed lookups
	}
	for range 10 {
		if who, err := check(client); err != nil || who != "two" {
			t.Fatalf("check while the name does not resolve: got %q, %v; want two (the last address)", who, err)
		}
	}
	if n := strings.Count(logs.String(), "does not resolve"); n != 1 {
		t.Errorf("failed lookup logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "consoleauth addresses changed") {
		t.Errorf("no log line for the changed addresses:\n%s", logs)
	}
}

// TestUnresolvableName: a name that never resolves makes calls fail with
// UNAVAILABLE naming it.
func TestUnresolvableName(t *testing.T) {
	p := newPKI(t, "nowhere.test")
	cc, client := dial(t, "nowhere.test:6090", p.client, Options{LookupHost: (&hosts{}).LookupHost})
	_, err := check(client)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "resolve nowhere.test") {
		t.Errorf("check: got %v, want UNAVAILABLE naming nowhere.test", err)
	}
	if Ready(cc) {
		t.Error("Ready: got true")
	}
}

func TestDialRefusesBadInput(t *testing.T) {
	p := newPKI(t, "127.0.0.1")
	for _, tc := range []struct {
		name, value string
		creds       credentials.TransportCredentials
		opts        Options
		want        string
	}{
		{"bad list", "a:1,,b:2", p.client, Options{}, "consoleauth_address: entry 2 of 3 is empty"},
		{"no credentials", "a:1", nil, Options{}, "no transport credentials"},
		{"bad retry method", "a:1", p.client, Options{Retry: []string{"CheckToken"}}, `retry method "CheckToken"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := Dial("consoleauth_address", tc.value, tc.creds, tc.opts)
			if err == nil {
				cc.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dial: got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestCloseLeavesNoGoroutine: closing the connection ends its resolver
// (DNS names re-resolved on a timer), its reachability log and its
// connections.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	p := newPKI(t, "127.0.0.1", "replicas.test")
	r := startReplica(t, "r", "127.0.0.1:0", p.server)
	_, port, _ := net.SplitHostPort(r.addr)
	h := &hosts{}
	h.set("replicas.test", "127.0.0.1")
	use := func() {
		cc, err := Dial("consoleauth_address", "replicas.test:"+port+","+deadAddr(t), p.client,
			Options{Name: "consoleauth", Retry: checkToken, LookupHost: h.LookupHost, ResolveInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if who, err := check(consoleauthv1.NewConsoleAuthServiceClient(cc)); err != nil || who != "r" {
			t.Fatalf("check: got %q, %v; want r", who, err)
		}
		cc.Close()
	}
	before := runtime.NumGoroutine()
	for range 5 {
		use()
	}
	waitGoroutines(t, before)
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitGoroutines waits until at most n goroutines run (the bound only
// stops a hang, then prints them).
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: got %d, want <= %d\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
