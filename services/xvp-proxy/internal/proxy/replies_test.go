package proxy

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/replies/*.golden from the code")

// goldenReplies names every answer the proxy can send.
var goldenReplies = map[string][]byte{
	"ok":             replyOK,
	"no-token":       replyNoToken,
	"malformed":      replyMalformed,
	"too-long":       replyTooLong,
	"incomplete":     replyIncomplete,
	"invalid-token":  replyInvalidToken,
	"moved":          replyMoved,
	"method":         replyMethod,
	"timeout":        replyTimeout,
	"bad-gateway":    replyBadGateway,
	"unavailable":    replyUnavailable,
	"too-many":       replyTooMany,
	"shutting-down":  replyShuttingDown,
	"too-many-conns": replyTooManyConns,
	"too-many-from":  replyTooManyFrom,
}

// TestRepliesMatchGoldenFiles pins every answer byte for byte; run with
// -update after a deliberate change and review the diff.
func TestRepliesMatchGoldenFiles(t *testing.T) {
	for name, got := range goldenReplies {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", "replies", name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}

// golden returns the committed bytes of a reply.
func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "replies", name+".golden"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
