package static

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

const (
	uuidA = "11111111-2222-3333-4444-555555555555"
	uuidB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	uuidC = "0f0f0f0f-0000-1111-2222-333333333333"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    map[string]Instance
		wantErr string // empty: no error
	}{
		{
			name: "full entry",
			data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_host": "10.0.0.5", "vnc_port": 5901, "internal_access_path": "/console?ref=x", "state": "paused"}]}`,
			want: map[string]Instance{uuidA: {UUID: uuidA, VNCHost: "10.0.0.5", VNCPort: 5901, InternalAccessPath: "/console?ref=x", State: StatePaused}},
		},
		{
			name: "defaults and upper case",
			data: `{"instances": [{"uuid": "` + strings.ToUpper(uuidB) + `", "vnc_port": 5900}, {"uuid": "` + uuidC + `", "vnc_host": "compute-1.example", "state": "stopped"}]}`,
			want: map[string]Instance{
				uuidB: {UUID: uuidB, VNCPort: 5900, State: StateRunning},
				uuidC: {UUID: uuidC, VNCHost: "compute-1.example", State: StateStopped},
			},
		},
		{name: "no instances", data: `{"instances": []}`, want: map[string]Instance{}},
		{name: "empty file", data: ``, wantErr: "empty file"},
		{name: "bad json", data: "{\"instances\": [\n  {\"uuid\": }\n]}", wantErr: "line 2 column 12: invalid character '}'"},
		{name: "wrong type", data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_port": "5901"}]}`, wantErr: "cannot unmarshal string"},
		{name: "unknown field", data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_prot": 5901}]}`, wantErr: `unknown field "vnc_prot"`},
		{name: "data after object", data: `{"instances": []} {}`, wantErr: "data after the top-level object"},
		{name: "uuid missing", data: `{"instances": [{"vnc_port": 5901}]}`, wantErr: "instances[0]: uuid missing"},
		{name: "bad uuid", data: `{"instances": [{"uuid": "vm-1", "vnc_port": 5901}]}`, wantErr: `instances[0]: uuid "vm-1" is not a UUID`},
		{name: "uuid with bad digit", data: `{"instances": [{"uuid": "g1111111-2222-3333-4444-555555555555"}]}`, wantErr: "is not a UUID"},
		{name: "port negative", data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_port": -1}]}`, wantErr: "vnc_port -1 out of range 1-65535"},
		{name: "port too large", data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_port": 65536}]}`, wantErr: "vnc_port 65536 out of range 1-65535"},
		{
			name:    "duplicate uuid",
			data:    `{"instances": [{"uuid": "` + uuidA + `", "vnc_port": 5901}, {"uuid": "` + uuidB + `"}, {"uuid": "` + strings.ToUpper(uuidA) + `", "vnc_port": 5902}]}`,
			wantErr: "instances[2]: uuid " + uuidA + " duplicates instances[0]",
		},
		{name: "bad state", data: `{"instances": [{"uuid": "` + uuidA + `", "state": "on"}]}`, wantErr: `state "on" unknown`},
		{name: "bad host", data: `{"instances": [{"uuid": "` + uuidA + `", "vnc_host": "a b"}]}`, wantErr: `vnc_host "a b" is not an IP address or host name`},
		{name: "path with newline", data: `{"instances": [{"uuid": "` + uuidA + `", "internal_access_path": "/x\r\nHost: evil"}]}`, wantErr: "internal_access_path must not contain spaces or control characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalidInventory) {
					t.Fatalf("got error %v, want ErrInvalidInventory containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for id, w := range tt.want {
				if got[id] != w {
					t.Errorf("instance %s: got %+v, want %+v", id, got[id], w)
				}
			}
		})
	}
}

// writeInventory replaces the file atomically, as an operator's tool would.
func writeInventory(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func openInventory(t *testing.T, data string, o Options) (*Driver, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, path, data)
	d, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	return d, path
}

const inventory1 = `{"instances": [
	{"uuid": "` + uuidA + `", "vnc_host": "127.0.0.1", "vnc_port": 5901},
	{"uuid": "` + uuidB + `", "vnc_port": 5902, "state": "stopped"},
	{"uuid": "` + uuidC + `"}
]}`

func TestConsole(t *testing.T) {
	d, _ := openInventory(t, inventory1, Options{})
	tests := []struct {
		name    string
		uuid    string
		want    driver.Console
		wantErr error
	}{
		{"running", uuidA, driver.Console{Host: "127.0.0.1", Port: 5901}, nil},
		{"upper case", strings.ToUpper(uuidA), driver.Console{Host: "127.0.0.1", Port: 5901}, nil},
		{"stopped", uuidB, driver.Console{}, driver.ErrNotRunning},
		{"no console", uuidC, driver.Console{}, driver.ErrNoConsole},
		{"unknown", "99999999-2222-3333-4444-555555555555", driver.Console{}, driver.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.Console(context.Background(), tt.uuid)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	ids, err := d.Instances(context.Background())
	if want := []string{uuidC, uuidA, uuidB}; err != nil || !slices.Equal(ids, want) {
		t.Errorf("instances: got %v, %v; want %v", ids, err, want)
	}
}

func TestOpenRefusesBadInventory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inventory.json")
	writeInventory(t, path, `{"instances": [{"uuid": "x"}]}`)
	if _, err := Open(path, Options{}); !errors.Is(err, ErrInvalidInventory) || !strings.Contains(err.Error(), path) {
		t.Errorf("got %v, want ErrInvalidInventory naming %s", err, path)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.json"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want os.ErrNotExist", err)
	}
}

// TestReloadOnChange edits the file under a running driver and checks the
// events it reports and the consoles it then serves.
func TestReloadOnChange(t *testing.T) {
	d, path := openInventory(t, inventory1, Options{PollInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	events := d.Watch(ctx)
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// A: new port; B: started; C: gone; D: new.
	const uuidD = "dddddddd-0000-1111-2222-333333333333"
	writeInventory(t, path, `{"instances": [
		{"uuid": "`+uuidA+`", "vnc_host": "127.0.0.1", "vnc_port": 5911},
		{"uuid": "`+uuidB+`", "vnc_port": 5902},
		{"uuid": "`+uuidD+`", "vnc_port": 5904, "state": "stopped"}
	]}`)
	want := []driver.Event{
		{UUID: uuidC, Kind: driver.MigratedAway},
		{UUID: uuidA, Kind: driver.ConsoleChanged},
		{UUID: uuidB, Kind: driver.Started},
		{UUID: uuidD, Kind: driver.Started},
	}
	got := readEvents(t, events, len(want))
	for i := range want {
		if got[i].UUID != want[i].UUID || got[i].Kind != want[i].Kind || got[i].Reason == "" {
			t.Errorf("event %d: got %+v, want %+v with a reason", i, got[i], want[i])
		}
	}
	if c, err := d.Console(ctx, uuidA); err != nil || c.Port != 5911 {
		t.Errorf("console of A after reload: got %+v, %v; want port 5911", c, err)
	}

	// Stop A.
	writeInventory(t, path, `{"instances": [{"uuid": "`+uuidA+`", "vnc_port": 5911, "state": "stopped"}]}`)
	got = readEvents(t, events, 3)
	if got[0].UUID != uuidA || got[0].Kind != driver.Stopped {
		t.Errorf("event: got %+v, want A stopped", got[0])
	}
	if got[1].UUID != uuidB || got[1].Kind != driver.MigratedAway ||
		got[2].UUID != uuidD || got[2].Kind != driver.MigratedAway {
		t.Errorf("events: got %+v, want B and D gone", got[1:])
	}

	cancel()
	<-done
	for range events { // closed once ctx ended
	}
}

func TestReloadKeepsLastGoodInventory(t *testing.T) {
	d, path := openInventory(t, inventory1, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	events := d.Watch(ctx)

	writeInventory(t, path, `{"instances": [{"uuid": "`+uuidA+`", "vnc_port": 99999}]}`)
	if err := d.Reload(); !errors.Is(err, ErrInvalidInventory) {
		t.Fatalf("reload of a bad file: got %v, want ErrInvalidInventory", err)
	}
	if c, err := d.Console(ctx, uuidA); err != nil || c.Port != 5901 {
		t.Errorf("console after a bad reload: got %+v, %v; want the old port 5901", c, err)
	}
	os.Remove(path)
	if err := d.Reload(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reload of a missing file: got %v, want os.ErrNotExist", err)
	}

	// Reload (SIGHUP) picks a fixed file up without polling.
	writeInventory(t, path, `{"instances": [{"uuid": "`+uuidA+`", "vnc_port": 5999}]}`)
	if err := d.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if c, err := d.Console(ctx, uuidA); err != nil || c.Port != 5999 {
		t.Errorf("console after reload: got %+v, %v; want port 5999", c, err)
	}
	got := readEvents(t, events, 3) // C gone, A's console changed, B gone
	if got[1].UUID != uuidA || got[1].Kind != driver.ConsoleChanged {
		t.Errorf("event: got %+v, want A's console changed", got[1])
	}
	// Unchanged content: no events.
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		t.Errorf("reload of the same content: got event %+v, want none", ev)
	default:
	}
}

func readEvents(t *testing.T, ch <-chan driver.Event, n int) []driver.Event {
	t.Helper()
	var got []driver.Event
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("events closed after %v, want %d", got, n)
			}
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("got events %+v after 5s, want %d", got, n)
		}
	}
	return got
}
