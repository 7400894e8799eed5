package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"testing"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/testkit/certs"
)

// targetAuthzShare bounds what authorisation may add to a session's setup.
const targetAuthzShare = 0.05

// guardedCallsPerSession are the authorised calls one session's setup
// makes: CheckToken (proxy to consoleauth) and ValidateConsolePort
// (consoleauth to the compute agent). The TLS handshakes that prove the
// callers' certificates are not per session: each service keeps its
// connections.
const guardedCallsPerSession = 2

// authzResult is the cost of authorising one call.
type authzResult struct {
	perCall  time.Duration
	allocs   int64
	iters    int
	sessions int // guarded calls per session
}

// authzRound is how long the last round of guarded calls lasts at least.
const authzRound = 500 * time.Millisecond

// benchAuthz times pkg/authn's gRPC guard, as consoleauth and the agent
// run it on every call, alone in this process: the identity taken from a
// verified client certificate (role from its URI SAN), the policy looked
// up, the identity put in the handler's context. The handler does nothing.
func benchAuthz(b *testing.B) *authzResult {
	ca, err := certs.NewCA("bench CA", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	leaf, err := ca.IssueIdentity(certs.Identity{Name: "novnc-proxy", Role: string(authn.RoleProxy)}, "localhost")
	if err != nil {
		b.Fatal(err)
	}
	guard := authn.NewGuard(authn.GuardOptions{
		Policy: authn.Policy{
			consoleauthv1.ConsoleAuthService_CheckToken_FullMethodName:           {authn.RoleProxy},
			consoleauthv1.ConsoleAuthService_GetConsoleURL_FullMethodName:        {authn.RoleAPI, authn.RoleMint},
			consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName: {authn.RoleAPI, authn.RoleCompute},
			computeagentv1.ComputeAgentService_GetConsole_FullMethodName:         {authn.RoleConsoleAuth},
		},
		Open:       authn.HealthMethods,
		RoleSource: authn.RoleFromSAN,
	})
	// What the gRPC server puts in a call's context on an mTLS connection.
	ctx := peer.NewContext(context.Background(), &peer.Peer{
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
			VerifiedChains: [][]*x509.Certificate{{leaf.Leaf, ca.Cert}},
		}},
	})
	interceptor := guard.UnaryInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: consoleauthv1.ConsoleAuthService_CheckToken_FullMethodName}
	req := &consoleauthv1.CheckTokenRequest{Token: "t", ConsoleType: "novnc"}
	handler := func(ctx context.Context, _ any) (any, error) {
		if _, ok := authn.FromContext(ctx); !ok {
			return nil, fmt.Errorf("no identity in the handler's context")
		}
		return nil, nil
	}
	if _, err := interceptor(ctx, req, info, handler); err != nil {
		b.Fatalf("the guard refused a proxy's CheckToken: %v", err)
	}
	// Timed by hand: testing.Benchmark cannot run inside a benchmark (both
	// take the package's benchmark lock). Rounds double until one lasts
	// authzRound; the fastest round per call is reported, as noise only
	// adds time.
	call := func() {
		if _, err := interceptor(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
	res := &authzResult{sessions: guardedCallsPerSession, perCall: time.Hour}
	for n := 1; ; n *= 2 {
		start := time.Now()
		for range n {
			call()
		}
		elapsed := time.Since(start)
		res.iters += n
		if elapsed >= authzRound/10 {
			res.perCall = min(res.perCall, elapsed/time.Duration(n))
		}
		if elapsed >= authzRound {
			break
		}
	}
	res.allocs = int64(testing.AllocsPerRun(1000, call))
	b.ReportMetric(float64(res.perCall)/1e3, "authz-us/call")
	return res
}

// printAuthz prints the authorisation row against the session setup
// measured in the same run.
func (r *report) printAuthz(p func(string, ...any), table func(func(*tabwriter.Writer))) {
	p("\n2c. Authorisation: pkg/authn's gRPC guard (certificate -> identity and role, policy, context) per guarded call, timed\n")
	p("   alone over %s calls; a session's setup makes %d guarded calls (CheckToken, then consoleauth's ValidateConsolePort).\n",
		thousands(r.authz.iters), r.authz.sessions)
	perSession := r.authz.perCall * time.Duration(r.authz.sessions)
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   per call\tallocs\tper session\tvs setup p50\ttarget\t")
		share := "not measured"
		verdictText := ""
		if r.setup != nil {
			if f := r.setup.find(pathNoVNC); f != nil {
				s := float64(perSession) / float64(f.p50)
				share = fmt.Sprintf("%.3f%% of %s (novnc-proxy)", 100*s, ms(f.p50))
				verdictText = fmt.Sprintf("< %.0f%%: %s", 100*targetAuthzShare, verdict(s < targetAuthzShare))
			}
		}
		fmt.Fprintf(tw, "   %.2f us\t%d\t%.2f us\t%s\t%s\t\n", float64(r.authz.perCall)/1e3, r.authz.allocs,
			float64(perSession)/1e3, share, verdictText)
	})
	p("   The mutual-TLS handshakes that verify the certificates happen once per connection, which the services keep.\n")
}

// find returns the figures of the path named name, or nil.
func (s *setupResult) find(name string) *setupFigures {
	for i := range s.paths {
		if s.paths[i].name == name {
			return &s.paths[i]
		}
	}
	return nil
}
