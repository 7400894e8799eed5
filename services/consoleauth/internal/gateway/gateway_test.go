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
	handle := errorHandler(slog.New(slog.DiscardHandler))
	tests := []struct {
		code     codes.Code
		wantHTTP int
		wantKey  string
	}{
		{codes.InvalidArgument, 400, "badRequest"},
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
