// Package novaconf finds the nova.conf the tests read, and runs a service's
// table of option cases. The nova.conf is Nova's own generated
// sample, as Debian's nova-common package ships it (every option of every
// section, nearly all commented out, and a few set: state_path,
// [database] connection, [keystone_authtoken] …). `make deps` installs it.
package novaconf

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// SamplePath is where Debian's nova-common puts Nova's sample nova.conf.
const SamplePath = "/usr/share/nova-common/nova.conf"

// Sample returns SamplePath. Without the file the test is skipped, or
// fails when CI=true.
func Sample(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(SamplePath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing (CI=true): %v; install Debian package nova-common (make deps)", SamplePath, err)
		}
		t.Skipf("%s missing: %v (make deps installs Debian package nova-common)", SamplePath, err)
	}
	return SamplePath
}

// Case is one row of a service's option table: a site file, arguments and
// environment, and the change to the service's defaults they must make, or
// a part of the error they must give.
type Case[C any] struct {
	Name string
	File string // the site file's text; "" for none
	Args []string
	Env  map[string]string
	Want func(*C) // from the defaults; nil: the defaults
	Err  string
}

// RunCases runs cases as subtests: each writes its site file, loads with
// --config-file before its arguments, and compares with defaults() changed
// by Want.
func RunCases[C any](t *testing.T, cases []Case[C], defaults func() C, load func(args []string) (C, error)) {
	t.Helper()
	dir := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			for k, v := range tc.Env {
				t.Setenv(k, v)
			}
			args := tc.Args
			if tc.File != "" {
				site := filepath.Join(dir, "site.conf")
				if err := os.WriteFile(site, []byte(tc.File), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append([]string{"--config-file", site}, args...)
			}
			got, err := load(args)
			if tc.Err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.Err) {
					t.Fatalf("got error %v, want one containing %q", err, tc.Err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			if tc.Want != nil {
				tc.Want(&want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config:\ngot  %+v\nwant %+v", got, want)
			}
		})
	}
}
