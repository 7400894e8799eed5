package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
)

// TestConsoleURLThroughTheRealServices is the `make run` path: the REST call
// answers with a URL whose token consoleauth accepts, pointing at the demo VM.
func TestConsoleURLThroughTheRealServices(t *testing.T) {
	w := devstacktest.Start(t, devstack.Options{Skip: map[string]bool{devstack.NoVNCProxy: true, devstack.XVPProxy: true}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	u := consoleURLOf(t, w, devstack.DemoUUID, "novnc")
	if want := w.NoVNCBaseURL() + "?path=%3Ftoken%3D"; !strings.HasPrefix(u, want) {
		t.Fatalf("got URL %s, want prefix %s", u, want)
	}
	token := tokenOf(t, u)
	resp, err := consoleAuthClient(t, w).CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token, ConsoleType: "novnc"})
	if err != nil {
		t.Fatalf("check-token of the URL's token: %v", err)
	}
	info := resp.GetConnectInfo()
	if got, want := info.GetHost()+":"+itoa(info.GetPort()), w.DemoVNC; got != want {
		t.Errorf("connect info: got %s, want the demo VNC server %s", got, want)
	}
	if info.GetInstanceUuid() != devstack.DemoUUID || info.GetComputeHost() != devstack.ComputeHost {
		t.Errorf("connect info: got instance %q on %q", info.GetInstanceUuid(), info.GetComputeHost())
	}

	// Introspection, as Nova's admin API.
	got := getJSON(t, w.RESTClient(), w.RESTURL()+"/v2.1/os-console-auth-tokens/"+token, http.StatusOK)
	if !strings.Contains(got, `"instance_uuid":"`+devstack.DemoUUID+`"`) {
		t.Errorf("introspection: got %s", got)
	}
	// The OpenAPI document is served.
	if doc := getJSON(t, w.RESTClient(), w.RESTURL()+"/openapi.json", http.StatusOK); !strings.Contains(doc, "/v2.1/servers/{server_id}/remote-consoles") {
		t.Errorf("openapi.json lacks the remote-consoles route")
	}
}

// TestComputeAgentGoneIs409 stops the real agent: its lease ends and
// consoleauth answers Nova's 409, while the instance is still known.
func TestComputeAgentGoneIs409(t *testing.T) {
	w := devstacktest.Start(t, devstack.Options{
		Skip: map[string]bool{devstack.NoVNCProxy: true, devstack.XVPProxy: true},
		Args: map[string][]string{devstack.ComputeAgent: {"--registration_ttl=2"}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	consoleURLOf(t, w, devstack.DemoUUID, "novnc")
	// SIGKILL: a dead agent cleans nothing up; its lease must expire.
	if err := w.Proc(devstack.ComputeAgent).Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute) // the lease lapses after 2s; this bounds a hang
	for {
		_, err := w.ConsoleURL(ctx, devstack.DemoUUID, "novnc")
		if err != nil && strings.Contains(err.Error(), "409") {
			if !strings.Contains(err.Error(), "down") {
				t.Errorf("409 body: got %v, want it to say the compute host is down", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the agent died: got %v, want 409", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Unknown instances are still 404, not 409.
	_, err := w.ConsoleURL(ctx, "00000000-0000-4000-8000-000000000000", "novnc")
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown instance: got %v, want 404", err)
	}
	// A token nobody minted (in a real token's form: 43 base64url
	// characters) stays refused while nothing can validate it.
	_, err = consoleAuthClient(t, w).CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: strings.Repeat("n", 43)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("bogus token: got %v, want NotFound", err)
	}
}

func getJSON(t *testing.T, c *http.Client, u string, want int) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: got %s %s, want %d", u, resp.Status, b, want)
	}
	if !json.Valid(b) {
		t.Fatalf("GET %s: body is not JSON: %s", u, b)
	}
	return string(b)
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
