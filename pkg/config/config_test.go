package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "vncgate.conf")
	conf := "[vnc]\n# comment\ntoken_ttl = 30\nnovncproxy_port = 7000\nallowed_origins = a.example\n"
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VNCGATE_NOVNCPROXY_PORT", "7001")

	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	ttl := fs.Int("token_ttl", 600, "")
	port := fs.Int("novncproxy_port", 6080, "")
	origins := fs.String("allowed_origins", "", "")
	host := fs.String("novncproxy_host", "0.0.0.0", "")
	if err := Load(fs, []string{"--config_file", file, "--allowed_origins=b.example"}); err != nil {
		t.Fatal(err)
	}
	if *ttl != 30 {
		t.Errorf("token_ttl from file: got %d, want 30", *ttl)
	}
	if *port != 7001 {
		t.Errorf("novncproxy_port: env must beat file: got %d, want 7001", *port)
	}
	if *origins != "b.example" {
		t.Errorf("allowed_origins: flag must beat file: got %q", *origins)
	}
	if *host != "0.0.0.0" {
		t.Errorf("novncproxy_host default: got %q", *host)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	n := 0
	write := func(body string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("c%d.conf", n))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"unknown setting in file", []string{"--config_file", write("nope = 1\n")}, "", `unknown setting "nope"`},
		{"bad value in file", []string{"--config_file", write("token_ttl = soon\n")}, "", "conf:1: token_ttl"},
		{"line without =", []string{"--config_file", write("token_ttl\n")}, "", "want name = value"},
		{"missing file", []string{"--config_file", filepath.Join(dir, "absent")}, "", "config file"},
		{"bad env", nil, "soon", "VNCGATE_TOKEN_TTL"},
		{"stray argument", []string{"extra"}, "", `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("VNCGATE_TOKEN_TTL", tc.env)
			}
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.Int("token_ttl", 600, "")
			err := Load(fs, tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}
