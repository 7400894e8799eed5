package authserver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestConsoleURLs(t *testing.T) {
	const token = "AbC-_9"
	tests := []struct {
		name     string
		base     string
		xvp      bool
		viewOnly bool
		want     string
	}{
		{name: "novnc", base: "http://127.0.0.1:6080/vnc_lite.html",
			want: "http://127.0.0.1:6080/vnc_lite.html?path=%3Ftoken%3DAbC-_9"},
		{name: "novnc keeps query", base: "https://console.example/vnc.html?lang=fr&scale=true",
			want: "https://console.example/vnc.html?lang=fr&path=%3Ftoken%3DAbC-_9&scale=true"},
		{name: "novnc appends to an existing path", base: "https://console.example/vnc.html?path=websockify",
			want: "https://console.example/vnc.html?path=websockify%3Ftoken%3DAbC-_9"},
		{name: "novnc view-only: the hint outside path", base: "http://127.0.0.1:6080/vnc_lite.html", viewOnly: true,
			want: "http://127.0.0.1:6080/vnc_lite.html?path=%3Ftoken%3DAbC-_9&view_only=1"},
		{name: "novnc normal: a base URL cannot say view-only", base: "http://127.0.0.1:6080/vnc.html?view_only=1&lang=fr",
			want: "http://127.0.0.1:6080/vnc.html?lang=fr&path=%3Ftoken%3DAbC-_9"},
		{name: "xvp", base: "http://127.0.0.1:6081/console", xvp: true,
			want: "http://127.0.0.1:6081/console?token=AbC-_9"},
		{name: "xvp keeps query", base: "http://public:6081/console?a=1", xvp: true,
			want: "http://public:6081/console?a=1&token=AbC-_9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, err := ParseBaseURL("base", tt.base)
			if err != nil {
				t.Fatal(err)
			}
			got := noVNCURL(base, token, tt.viewOnly)
			if tt.xvp {
				got = xvpURL(base, token)
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			if base.String() != tt.base {
				t.Errorf("base URL changed to %s", base)
			}
		})
	}
}

func TestParseBaseURLRefusesRelative(t *testing.T) {
	for _, raw := range []string{"/vnc_lite.html", "ftp://x/y", "http://", "::"} {
		if _, err := ParseBaseURL("novncproxy_base_url", raw); err == nil {
			t.Errorf("%q: got nil error, want one", raw)
		}
	}
}

func TestToStatus(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		want    codes.Code
		wantMsg string
	}{
		{name: "nil", err: nil, want: codes.OK},
		{name: "invalid", err: detail(ErrInvalidArgument, `unsupported protocol "rdp": only vnc is served`),
			want: codes.InvalidArgument, wantMsg: `unsupported protocol "rdp": only vnc is served`},
		{name: "disabled", err: detail(ErrTypeDisabled, "x"), want: codes.Unimplemented},
		{name: "wrong type", err: detail(ErrWrongType, "x"), want: codes.PermissionDenied},
		{name: "moved", err: detail(ErrConsoleMoved, "x"), want: codes.FailedPrecondition},
		{name: "agent gone", err: detail(ErrAgentGone, "x"), want: codes.Unavailable},
		{name: "token not found", err: fmt.Errorf("check: %w", tokenstore.ErrNotFound), want: codes.NotFound},
		{name: "unknown instance", err: tokenstore.ErrUnknownInstance, want: codes.NotFound},
		{name: "compute down", err: tokenstore.ErrComputeDown, want: codes.FailedPrecondition},
		{name: "etcd down: no key path, no etcd error",
			err:  fmt.Errorf("%w: get /vncgate/tokens/x: context deadline exceeded", tokenstore.ErrStoreUnavailable),
			want: codes.Unavailable, wantMsg: "the console service is temporarily unavailable"},
		{name: "agent fault", err: fmt.Errorf("compute agent of host h1 failed: Internal: boom: %w", agentclient.ErrFailed),
			want: codes.Internal, wantMsg: "compute agent of host h1 failed: Internal: boom: compute agent failed"},
		{name: "agent not found", err: agentclient.ErrNotFound, want: codes.NotFound},
		{name: "agent not ready", err: agentclient.ErrNotReady, want: codes.FailedPrecondition},
		{name: "no console", err: agentclient.ErrNoConsole, want: codes.InvalidArgument},
		{name: "agent unreachable", err: agentclient.ErrUnreachable, want: codes.Unavailable},
		{name: "canceled", err: fmt.Errorf("x: %w", context.Canceled), want: codes.Canceled},
		{name: "status kept", err: status.Error(codes.Aborted, "a"), want: codes.Aborted},
		{name: "other: its text is not sent", err: errors.New("decode /vncgate/computes/h1: boom"),
			want: codes.Internal, wantMsg: "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := toStatus(tt.err)
			st := status.Convert(got)
			if st.Code() != tt.want {
				t.Errorf("code: got %s, want %s", st.Code(), tt.want)
			}
			if tt.wantMsg != "" && st.Message() != tt.wantMsg {
				t.Errorf("message: got %q, want %q", st.Message(), tt.wantMsg)
			}
		})
	}
}
