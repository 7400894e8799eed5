package requestid

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

func TestHTTP(t *testing.T) {
	for _, tc := range []struct {
		name, sent string
		keep       bool
	}{
		{"a valid id is kept", "abc-123.x:y_z", true},
		{"none: one is made", "", false},
		{"spaces: replaced", "a b", false},
		{"65 characters: replaced", strings.Repeat("a", 65), false},
		{"a header injection attempt: replaced", "a\r\nX-Evil: 1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen string
			var md metadata.MD
			h := HTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen = FromContext(r.Context())
				md = Metadata(r.Context(), r)
			}))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.sent != "" {
				req.Header[Header] = []string{tc.sent}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			got := rec.Header().Get(Header)
			if !Valid(got) || got != seen {
				t.Fatalf("answered %q, handler saw %q: want the same valid id", got, seen)
			}
			if tc.keep != (got == tc.sent) {
				t.Errorf("got %q for %q, want it kept: %v", got, tc.sent, tc.keep)
			}
			if ids := md.Get(MetadataKey); len(ids) != 1 || ids[0] != got {
				t.Errorf("gRPC metadata: got %q, want [%q]", ids, got)
			}
		})
	}
}

func TestMetadataWithoutID(t *testing.T) {
	if md := Metadata(context.Background(), nil); md != nil {
		t.Errorf("got %v, want no metadata without an id", md)
	}
}

func TestUnaryClientInterceptor(t *testing.T) {
	intercept := UnaryClientInterceptor()
	send := func(ctx context.Context) []string {
		var got []string
		_ = intercept(ctx, "/m", nil, nil, nil, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			md, _ := metadata.FromOutgoingContext(ctx)
			got = md.Get(MetadataKey)
			return nil
		})
		return got
	}
	ctx := NewContext(context.Background(), "ctx-id")
	if got := send(ctx); len(got) != 1 || got[0] != "ctx-id" {
		t.Errorf("from the context: got %q, want [ctx-id]", got)
	}
	// Twice through (grpcclient's and grpcserver's): still one id.
	if got := send(Outgoing(ctx)); len(got) != 1 {
		t.Errorf("already in the metadata: got %q, want it once", got)
	}
	if got := send(context.Background()); len(got) != 0 {
		t.Errorf("no id: got %q, want none sent", got)
	}
}
