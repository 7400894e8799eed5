package authn

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/testlog"
)

// writeFile replaces path's content atomically, as an operator's tooling
// should (a reader never sees half a file).
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newKey(t *testing.T, name string, role Role) (key, line string) {
	t.Helper()
	key, line, err := NewKey(name, role)
	if err != nil {
		t.Fatal(err)
	}
	return key, line
}

// eventually retries check until it succeeds: the file is looked at again
// at most once a second. The deadline only bounds a hang.
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 15 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNewKey(t *testing.T) {
	key, line := newKey(t, "nova-api", RoleAPI)
	if !strings.HasPrefix(key, KeyPrefix) || len(key) != len(KeyPrefix)+43 {
		t.Errorf("key %q: want %s and 43 characters (256 bits)", key, KeyPrefix)
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "nova-api" || f[1] != "api" || len(f[2]) != 64 || strings.Contains(line, key) {
		t.Errorf("line %q: want NAME ROLE SHA256HEX without the key", line)
	}
	if other, _ := newKey(t, "nova-api", RoleAPI); other == key {
		t.Error("two keys are equal")
	}
	for _, bad := range []struct {
		name string
		role Role
	}{{"", RoleAPI}, {"two words", RoleAPI}, {strings.Repeat("n", 65), RoleAPI}, {"x", "root"}} {
		if _, _, err := NewKey(bad.name, bad.role); err == nil {
			t.Errorf("NewKey(%q, %q): got no error", bad.name, bad.role)
		}
	}
}

func TestKeyFileLookup(t *testing.T) {
	apiKey, apiLine := newKey(t, "nova-api", RoleAPI)
	computeKey, computeLine := newKey(t, "compute-1", RoleCompute)
	path := filepath.Join(t.TempDir(), "keys")
	writeFile(t, path, "# vncgate keys\n\n"+apiLine+"\n  "+computeLine+"  \n")
	k, err := LoadKeyFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The api key with its last character changed (to one it is not).
	other := "A"
	if strings.HasSuffix(apiKey, other) {
		other = "B"
	}
	tests := []struct {
		name string
		key  string
		want Identity
		ok   bool
	}{
		{"api key", apiKey, Identity{Name: "nova-api", Role: RoleAPI, Via: "key"}, true},
		{"compute key: its host is its name", computeKey, Identity{Name: "compute-1", Role: RoleCompute, Host: "compute-1", Via: "key"}, true},
		{"unknown key", apiKey[:len(apiKey)-1] + other, Identity{}, false},
		{"the hash instead of the key", strings.Fields(apiLine)[2], Identity{}, false},
		{"empty", "", Identity{}, false},
		{"too long", strings.Repeat("k", 10000), Identity{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := k.Lookup(tt.key)
			if ok != tt.ok || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestKeyFileRefusesBrokenFiles(t *testing.T) {
	_, line := newKey(t, "a", RoleAPI)
	_, other := newKey(t, "b", RoleProxy)
	hash := strings.Fields(line)[2]
	tests := []struct {
		name, content, want string
	}{
		{"two fields", "a api\n", "keys:1: want NAME ROLE SHA256HEX, got 2 fields"},
		{"unknown role", "# c\na admin " + hash + "\n", `keys:2: unknown role "admin"`},
		{"a key where the hash goes", "a api vgk_" + strings.Repeat("x", 43) + "\n", "keys:1: key hash of a: want 64 hex digits (the key's SHA-256, never the key)"},
		{"not hex", "a api " + strings.Repeat("g", 64) + "\n", "keys:1: key hash of a: want 64 hex digits"},
		{"name used twice", line + "\n" + strings.Replace(other, "b ", "a ", 1) + "\n", `keys:2: key name "a" already used on line 1`},
		{"same key twice", line + "\nb proxy " + hash + "\n", "keys:2: the same key hash as line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys")
			writeFile(t, path, tt.content)
			_, err := LoadKeyFile(path, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}

// TestKeyFileReload: a key added to the file works without a restart, a
// key removed stops working, and a broken file keeps the last good keys
// with one error line.
func TestKeyFileReload(t *testing.T) {
	oldKey, oldLine := newKey(t, "old", RoleAPI)
	newK, newLine := newKey(t, "new", RoleAPI)
	path := filepath.Join(t.TempDir(), "keys")
	writeFile(t, path, oldLine+"\n")
	var logs testlog.Buffer
	k, err := LoadKeyFile(path, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Lookup(newK); ok {
		t.Fatal("a key not in the file was accepted")
	}
	writeFile(t, path, newLine+"\n")
	eventually(t, "the new key", func() bool { _, ok := k.Lookup(newK); return ok })
	if _, ok := k.Lookup(oldKey); ok {
		t.Error("a key removed from the file still works")
	}

	writeFile(t, path, newLine+"\nbroken line\n")
	eventually(t, "the broken file logged", func() bool {
		if _, ok := k.Lookup(newK); !ok {
			t.Fatal("with a broken file: the last good keys are no longer in force")
		}
		return strings.Contains(logs.String(), "api_keys_file changed but is broken")
	})
	if n := strings.Count(logs.String(), "is broken"); n != 1 {
		t.Errorf("the broken file was logged %d times, want once", n)
	}
	if strings.Contains(logs.String(), newK) {
		t.Error("a key was logged")
	}
}
