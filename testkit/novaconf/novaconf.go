// Package novaconf finds the nova.conf the tests read: Nova's own generated
// sample, as Debian's nova-common package ships it (every option of every
// section, nearly all commented out, and a few set: state_path,
// [database] connection, [keystone_authtoken] …). `make deps` installs it.
package novaconf

import (
	"os"
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
