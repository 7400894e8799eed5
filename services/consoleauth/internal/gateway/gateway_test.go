package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorHandlerMapsCodesToNovaFaults(t *testing.T) {
	handle := errorHandler(slog.New(slog.DiscardHandler), nil)
	tests := []struct {
		code     codes.Code
		wantHTTP int
		wantKey  string
	}{
		{codes.InvalidArgument, 400, "badRequest"},
		{codes.Unauthenticated, 401, "unauthorized"},
		{codes.PermissionDenied, 403, "forbidden"},
		{codes.NotFound, 404, "itemNotFound"},
		{codes.FailedPrecondition, 409, "conflictingRequest"},
		{codes.Internal, 500, "computeFault"},
		{codes.Unknown, 500, "computeFault"},
		{codes.DeadlineExceeded, 500, "computeFault"},
		{codes.Unimplemented, 501, "notImplemented"},
		{codes.Unavailable, 503, "serviceUnavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/v2.1/x", nil)
			handle(context.Background(), nil, nil, rec, req, status.Error(tt.code, "why it failed"))
			if rec.Code != tt.wantHTTP {
				t.Errorf("status: got %d, want %d", rec.Code, tt.wantHTTP)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type: got %q, want application/json", ct)
			}
			var body map[string]fault
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			want := fault{Code: tt.wantHTTP, Message: "why it failed"}
			if got := body[tt.wantKey]; len(body) != 1 || got != want {
				t.Errorf("body: got %v, want {%q: %+v}", body, tt.wantKey, want)
			}
		})
	}
}

func TestHealthz(t *testing.T) {
	tests := []struct {
		name   string
		health func(context.Context) error
		want   int
	}{
		{name: "healthy", health: func(context.Context) error { return nil }, want: http.StatusOK},
		{name: "etcd down", health: func(context.Context) error { return status.Error(codes.Unavailable, "down") }, want: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(context.Background(), nil, Options{Health: tt.health})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
			if rec.Code != tt.want {
				t.Errorf("status: got %d, want %d", rec.Code, tt.want)
			}
		})
	}
}

func TestMicroversionIsEchoedOrRefused(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	tests := []struct {
		name    string
		headers map[string]string
		status  int
		want    string // the version answered
	}{
		{"none: 2.1", nil, 200, "2.1"},
		{"legacy header", map[string]string{"X-OpenStack-Nova-API-Version": "2.6"}, 200, "2.6"},
		{"API-SIG header", map[string]string{"OpenStack-API-Version": "compute 2.6"}, 200, "2.6"},
		{"API-SIG wins, other services ignored", map[string]string{"OpenStack-API-Version": "identity 3.0, compute 2.8", "X-OpenStack-Nova-API-Version": "2.6"}, 200, "2.8"},
		{"latest", map[string]string{"OpenStack-API-Version": "compute latest"}, 200, "2.100"},
		{"too new", map[string]string{"X-OpenStack-Nova-API-Version": "2.101"}, 406, "2.1"},
		{"major 3", map[string]string{"X-OpenStack-Nova-API-Version": "3.0"}, 406, "2.1"},
		{"garbage", map[string]string{"X-OpenStack-Nova-API-Version": "two.six"}, 406, "2.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v2.1/servers/x/remote-consoles", nil)
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			microversion(ok).ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Errorf("status: got %d, want %d (%s)", rec.Code, tt.status, rec.Body)
			}
			if got := rec.Header().Get("X-OpenStack-Nova-API-Version"); got != tt.want {
				t.Errorf("X-OpenStack-Nova-API-Version: got %q, want %q", got, tt.want)
			}
			if got := rec.Header().Get("OpenStack-API-Version"); got != "compute "+tt.want {
				t.Errorf("OpenStack-API-Version: got %q, want %q", got, "compute "+tt.want)
			}
		})
	}
}
