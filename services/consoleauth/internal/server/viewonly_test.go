package server_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
)

// TestViewOnlyConsoles mints tokens through each REST call with and without
// the view-only flag, then checks what the proxies (CheckToken) and the
// admins (introspection) are told, and what the console URL says. Without
// the flag every answer is exactly Nova's.
func TestViewOnlyConsoles(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901, Path: "/p"})
	ctx := testworld.Ctx(t)

	tests := []struct {
		name, path, body string
		answerKey        string // "remote_console" or "console"
		wantViewOnly     bool
		wantAnswer       map[string]bool // answer object's keys
	}{
		{name: "remote-consoles, no flag (Nova's request)", path: "/remote-consoles",
			body:      `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`,
			answerKey: "remote_console", wantAnswer: map[string]bool{"protocol": true, "type": true, "url": true}},
		{name: "remote-consoles, view_only false", path: "/remote-consoles",
			body:      `{"remote_console": {"protocol": "vnc", "type": "novnc", "view_only": false}}`,
			answerKey: "remote_console", wantAnswer: map[string]bool{"protocol": true, "type": true, "url": true}},
		{name: "remote-consoles, view_only true", path: "/remote-consoles",
			body:      `{"remote_console": {"protocol": "vnc", "type": "novnc", "view_only": true}}`,
			answerKey: "remote_console", wantViewOnly: true,
			wantAnswer: map[string]bool{"protocol": true, "type": true, "url": true, "view_only": true}},
		{name: "remote-consoles xvpvnc, view_only true", path: "/remote-consoles",
			body:      `{"remote_console": {"protocol": "vnc", "type": "xvpvnc", "view_only": true}}`,
			answerKey: "remote_console", wantViewOnly: true,
			wantAnswer: map[string]bool{"protocol": true, "type": true, "url": true, "view_only": true}},
		{name: "legacy action, no flag", path: "/action",
			body:      `{"os-getVNCConsole": {"type": "novnc"}}`,
			answerKey: "console", wantAnswer: map[string]bool{"type": true, "url": true}},
		{name: "legacy action, view_only true", path: "/action",
			body:      `{"os-getVNCConsole": {"type": "novnc", "view_only": true}}`,
			answerKey: "console", wantViewOnly: true, wantAnswer: map[string]bool{"type": true, "url": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, m := w.do(t, "POST", "/v2.1/servers/"+vm+tt.path, tt.body)
			if code != http.StatusOK {
				t.Fatalf("status: got %d %v, want 200", code, m)
			}
			answer, _ := m[tt.answerKey].(map[string]any)
			for k := range answer {
				if !tt.wantAnswer[k] {
					t.Errorf("answer %v: unexpected key %q", answer, k)
				}
			}
			for k := range tt.wantAnswer {
				if _, ok := answer[k]; !ok {
					t.Errorf("answer %v: no %q", answer, k)
				}
			}
			if tt.wantViewOnly && tt.wantAnswer["view_only"] && answer["view_only"] != true {
				t.Errorf("answer view_only: got %v, want true", answer["view_only"])
			}

			rawURL := str(t, m, tt.answerKey, "url")
			u, err := url.Parse(rawURL)
			if err != nil {
				t.Fatal(err)
			}
			wantHint := ""
			if tt.wantViewOnly && str(t, m, tt.answerKey, "type") == "novnc" {
				wantHint = "1"
			}
			if got := u.Query().Get("view_only"); got != wantHint {
				t.Errorf("url %s: view_only=%q, want %q", rawURL, got, wantHint)
			}
			token := tokenOf(t, rawURL)

			resp, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: token})
			if err != nil {
				t.Fatalf("check token: %v", err)
			}
			if got := resp.GetConnectInfo().GetViewOnly(); got != tt.wantViewOnly {
				t.Errorf("CheckToken view_only: got %v, want %v", got, tt.wantViewOnly)
			}

			code, m = w.do(t, "GET", "/v2.1/os-console-auth-tokens/"+token, "")
			if code != http.StatusOK {
				t.Fatalf("introspection: got %d %v, want 200", code, m)
			}
			got, _ := json.Marshal(m)
			want := `{"console":{"host":"10.1.2.3","instance_uuid":"` + vm + `","internal_access_path":"/p","port":5901}}`
			if tt.wantViewOnly {
				want = `{"console":{"host":"10.1.2.3","instance_uuid":"` + vm + `","internal_access_path":"/p","port":5901,"view_only":true}}`
			}
			if string(got) != want {
				t.Errorf("introspection: got %s, want %s", got, want)
			}
			gr, err := w.grpc.GetConsoleAuthToken(ctx, &consoleauthv1.GetConsoleAuthTokenRequest{ConsoleToken: token})
			if err != nil {
				t.Fatalf("introspection over gRPC: %v", err)
			}
			if got := gr.GetConsole().GetViewOnly(); got != tt.wantViewOnly {
				t.Errorf("introspection over gRPC view_only: got %v, want %v", got, tt.wantViewOnly)
			}
		})
	}
}

// TestViewOnlyOverGRPC: the same flag through the gRPC call the REST route
// maps to.
func TestViewOnlyOverGRPC(t *testing.T) {
	t.Parallel()
	w := newWorld(t, nil)
	w.agent.AddInstance(t, vm, testworld.Console{Host: "10.1.2.3", Port: 5901})
	ctx := testworld.Ctx(t)
	viewOnly := true
	resp, err := w.grpc.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{ServerId: vm,
		RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc", ViewOnly: &viewOnly}})
	if err != nil {
		t.Fatalf("get console url: %v", err)
	}
	if !resp.GetRemoteConsole().GetViewOnly() {
		t.Errorf("answer: got view_only false, want true")
	}
	ci, err := w.proxy.CheckToken(ctx, &consoleauthv1.CheckTokenRequest{Token: tokenOf(t, resp.GetRemoteConsole().GetUrl()), ConsoleType: "novnc"})
	if err != nil {
		t.Fatalf("check token: %v", err)
	}
	if !ci.GetConnectInfo().GetViewOnly() {
		t.Errorf("CheckToken: got view_only false, want true")
	}
}
