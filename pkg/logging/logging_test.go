package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/pkg/config"
)

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		wantLevel slog.Level
		wantText  bool
		err       string
	}{
		{"defaults: JSON at info", nil, slog.LevelInfo, false, ""},
		{"text", []string{"--log_format=text"}, slog.LevelInfo, true, ""},
		{"log_level", []string{"--log_level=warn"}, slog.LevelWarn, false, ""},
		{"nova.conf's debug wins", []string{"--log_level=error", "--debug"}, slog.LevelDebug, false, ""},
		{"bad level", []string{"--log_level=loud"}, 0, false, "want debug, info, warn or error"},
		{"bad format", []string{"--log_format=xml"}, 0, false, "want json or text"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o Options
			s := config.New("test")
			s.Output = &bytes.Buffer{}
			o.Declare(s)
			_, err := s.Load(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			log := New(&buf, "novnc-proxy", o)
			log.Log(t.Context(), tc.wantLevel, "at the level", "error", "boom")
			log.Log(t.Context(), tc.wantLevel-1, "below the level")
			out := buf.String()
			if strings.Contains(out, "below the level") || !strings.Contains(out, "at the level") {
				t.Fatalf("level %v: got %q", tc.wantLevel, out)
			}
			if tc.wantText {
				if !strings.Contains(out, "service=novnc-proxy") || !strings.Contains(out, "error=boom") {
					t.Errorf("text: got %q", out)
				}
				return
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(out), &rec); err != nil || rec["service"] != "novnc-proxy" || rec["error"] != "boom" {
				t.Errorf("JSON: got %q (%v)", out, err)
			}
		})
	}
}
