package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

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

// TestCallerTextCannotMakeAHugeLine logs what an attacker could send (a 2 MiB
// server_id) in every place a record carries text: no line gets long.
func TestCallerTextCannotMakeAHugeLine(t *testing.T) {
	huge := strings.Repeat("é", 1<<20) // 2 MiB, two bytes a character
	type payload struct{ ID string }
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			cases := map[string]func(*slog.Logger){
				"message":     func(l *slog.Logger) { l.Info(huge) },
				"string":      func(l *slog.Logger) { l.Info("refused", "instance", huge) },
				"error":       func(l *slog.Logger) { l.Warn("rpc", "error", errors.New("instance "+huge+" not found")) },
				"struct":      func(l *slog.Logger) { l.Info("request", "body", payload{ID: huge}) },
				"slice":       func(l *slog.Logger) { l.Info("request", "ids", []string{huge, huge}) },
				"group":       func(l *slog.Logger) { l.Info("request", slog.Group("req", "server_id", huge)) },
				"with":        func(l *slog.Logger) { l.With("instance", huge).Info("refused") },
				"key":         func(l *slog.Logger) { l.Info("refused", huge, 1) },
				"stringer":    func(l *slog.Logger) { l.Info("refused", "v", slog.AnyValue(stringer(huge))) },
				"short stays": func(l *slog.Logger) { l.Info("refused", "instance", "abc") },
			}
			for name, logIt := range cases {
				var buf bytes.Buffer
				logIt(New(&buf, "consoleauth", Options{Format: format}))
				line := buf.String()
				if n := len(line); n > 4<<10 {
					t.Errorf("%s: got a %d-byte line, want at most 4 KiB", name, n)
				}
				if name == "short stays" {
					if strings.Contains(line, "truncated") || !strings.Contains(line, "abc") {
						t.Errorf("%s: got %q, want the value untouched", name, line)
					}
					continue
				}
				if !strings.Contains(line, "truncated, ") {
					t.Errorf("%s: got %.200q…, want a truncation mark", name, line)
				}
				if !utf8.ValidString(line) {
					t.Errorf("%s: the cut split a character", name)
				}
				if format == "json" {
					var rec map[string]any
					if err := json.Unmarshal([]byte(line), &rec); err != nil {
						t.Errorf("%s: not one JSON record: %v", name, err)
					}
				}
			}
		})
	}
}

type stringer string

func (s stringer) String() string { return string(s) }

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…[truncated, 4 bytes]"},
		{"aéb", 2, "a…[truncated, 4 bytes]"}, // é is two bytes: not split
		{"", 0, ""},
	}
	for _, tt := range tests {
		if got := Truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("Truncate(%q, %d): got %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
