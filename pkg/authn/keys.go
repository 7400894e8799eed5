package authn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// KeyPrefix starts every bearer key NewKey makes, so that secret scanners
// and people recognise one.
const KeyPrefix = "vgk_"

// maxKeyLen bounds a presented key: ours are 47 bytes.
const maxKeyLen = 256

// keyCheckInterval is how often, at most, the key file is looked at.
const keyCheckInterval = time.Second

// NewKey makes a bearer key for a caller called name with role: 256 random
// bits. It returns the key, to give the caller once, and the line for the
// api_keys_file, which holds only the key's SHA-256.
func NewKey(name string, role Role) (key, line string, err error) {
	if err := checkKeyName(name); err != nil {
		return "", "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", "", err
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	key = KeyPrefix + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(key))
	return key, fmt.Sprintf("%s %s %s", name, role, hex.EncodeToString(sum[:])), nil
}

func checkKeyName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("key name %.70q: want 1 to 64 characters", name)
	}
	for _, c := range name {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("key name %.70q: want printable ASCII without spaces", name)
		}
	}
	return nil
}

// keyEntry is one line of the key file.
type keyEntry struct {
	name string
	role Role
	hash [sha256.Size]byte
}

// KeyFile holds the bearer keys of [vncgate] api_keys_file: one key a line,
// "NAME ROLE SHA256HEX", blank lines and lines starting with # ignored.
// Only the keys' hashes are stored. When a key is presented, the file is
// read again if it was not for a second, and parsed again if its content
// changed (content, not modification time: two writes within one clock
// tick of the file system look alike); a file that cannot be read or
// parsed then is logged once and the keys read before stay in force.
// KeyFile is safe for concurrent use.
type KeyFile struct {
	path string
	log  *slog.Logger

	mu   sync.Mutex
	next time.Time
	// seen is the SHA-256 of the content last read (good or broken), or
	// zero when the file could not be read.
	seen [sha256.Size]byte
	keys []keyEntry
}

// LoadKeyFile reads path; an unreadable or malformed file is an error, so
// that a service does not start with it.
func LoadKeyFile(path string, log *slog.Logger) (*KeyFile, error) {
	if log == nil {
		log = slog.Default()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("api_keys_file: %w", err)
	}
	keys, err := parseKeys(path, data)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		log.Warn("api_keys_file holds no key: no caller can use a bearer key", "file", path)
	}
	return &KeyFile{path: path, log: log, next: time.Now().Add(keyCheckInterval), seen: sha256.Sum256(data), keys: keys}, nil
}

// Len is the number of keys in force.
func (k *KeyFile) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.keys)
}

// Lookup returns the identity of the caller holding key. The presented
// key's SHA-256 is compared with every stored hash in constant time.
func (k *KeyFile) Lookup(key string) (Identity, bool) {
	if key == "" || len(key) > maxKeyLen {
		return Identity{}, false
	}
	keys := k.current()
	sum := sha256.Sum256([]byte(key))
	found := -1
	for i := range keys {
		if subtle.ConstantTimeCompare(sum[:], keys[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, false
	}
	e := keys[found]
	id := Identity{Name: e.name, Role: e.role, Via: "key"}
	if e.role == RoleCompute {
		id.Host = e.name
	}
	return id, true
}

// current returns the keys in force, reading the file again when it
// changed.
func (k *KeyFile) current() []keyEntry {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if now.Before(k.next) {
		return k.keys
	}
	k.next = now.Add(keyCheckInterval)
	data, err := os.ReadFile(k.path)
	if err != nil {
		if k.seen != ([sha256.Size]byte{}) {
			k.log.Error("api_keys_file cannot be read; keeping the keys read before", "file", k.path, "error", err)
		}
		k.seen = [sha256.Size]byte{}
		return k.keys
	}
	sum := sha256.Sum256(data)
	if sum == k.seen {
		return k.keys
	}
	k.seen = sum
	keys, err := parseKeys(k.path, data)
	if err != nil {
		k.log.Error("api_keys_file changed but is broken; keeping the keys read before", "file", k.path, "error", err)
		return k.keys
	}
	k.keys = keys
	k.log.Info("api_keys_file reloaded", "file", k.path, "keys", len(keys))
	return keys
}

// parseKeys parses a key file's content; errors name the file and line.
func parseKeys(path string, data []byte) ([]keyEntry, error) {
	var keys []keyEntry
	names := map[string]int{}
	hashes := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		e, err := parseKeyLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if prev, dup := names[e.name]; dup {
			return nil, fmt.Errorf("%s:%d: key name %q already used on line %d", path, n, e.name, prev)
		}
		if prev, dup := hashes[e.hash]; dup {
			return nil, fmt.Errorf("%s:%d: the same key hash as line %d", path, n, prev)
		}
		names[e.name], hashes[e.hash] = n, n
		keys = append(keys, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

func parseKeyLine(line string) (keyEntry, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return keyEntry{}, fmt.Errorf("want NAME ROLE SHA256HEX, got %d fields (make a line with `consoleauth keygen NAME ROLE`)", len(f))
	}
	if err := checkKeyName(f[0]); err != nil {
		return keyEntry{}, err
	}
	role, err := ParseRole(f[1])
	if err != nil {
		return keyEntry{}, err
	}
	e := keyEntry{name: f[0], role: role}
	if len(f[2]) != 2*sha256.Size {
		return keyEntry{}, fmt.Errorf("key hash of %s: want 64 hex digits (the key's SHA-256, never the key), got %d characters", f[0], len(f[2]))
	}
	if _, err := hex.Decode(e.hash[:], []byte(f[2])); err != nil {
		return keyEntry{}, fmt.Errorf("key hash of %s: want 64 hex digits: %v", f[0], err)
	}
	return e, nil
}
