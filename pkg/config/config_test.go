package config

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/testkit/novaconf"
)

// opts is a service's worth of options of every kind, in the sections
// Nova uses.
type opts struct {
	Port     int
	BaseURL  string
	Enabled  bool
	TTL      time.Duration
	Origins  []string
	Cert     string
	SSLOnly  bool
	MyIP     string
	Proxy    string
	URI      string
	Idle     time.Duration
	Format   string
	Etcd     tlsconfig.Files
	Trusted  []string
	Enforced bool
}

func newSet(service string) (*Set, *opts) {
	o := &opts{}
	s := New(service)
	s.Int(&o.Port, "vnc", "novncproxy_port", 6080, "port")
	s.String(&o.BaseURL, "vnc", "novncproxy_base_url", "http://127.0.0.1:6080/vnc_lite.html", "base URL")
	s.Bool(&o.Enabled, "vnc", "enabled", true, "VNC on").Flag("vnc_enabled")
	s.Seconds(&o.TTL, "consoleauth", "token_ttl", 600*time.Second, "ttl")
	s.List(&o.Origins, "console", "allowed_origins", nil, "origins")
	s.String(&o.Cert, "DEFAULT", "cert", "", "cert")
	s.Bool(&o.SSLOnly, "DEFAULT", "ssl_only", false, "ssl only")
	s.String(&o.MyIP, "DEFAULT", "my_ip", "", "my ip")
	s.String(&o.Proxy, "vnc", "server_proxyclient_address", "127.0.0.1", "proxy client address")
	s.String(&o.URI, "libvirt", "connection_uri", "qemu:///system", "uri").Flag("libvirt_uri")
	s.Seconds(&o.Idle, "vncgate", "idle_timeout", 0, "idle")
	s.Choice(&o.Format, "vncgate", "log_format", "json", []string{"json", "text"}, "format")
	s.TLS(&o.Etcd, "vncgate", "etcd", "etcd")
	s.List(&o.Trusted, "vncgate", "trusted_proxies", nil, "proxies")
	s.Bool(&o.Enforced, "consoleauth", "enforce_session_timeout", false, "enforce")
	return s, o
}

// write puts a file named name with body into dir and returns its path.
func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func load(t *testing.T, args ...string) (*opts, Notes, error) {
	t.Helper()
	s, o := newSet("novnc-proxy")
	s.Output = &bytes.Buffer{}
	n, err := s.Load(args)
	return o, n, err
}

func TestINISyntax(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want []assignment
		err  string
	}{
		{"sections, comments, separators", "[DEFAULT]\n# comment\n; comment\nmy_ip = 10.0.0.1\n[VNC]\nenabled: false\nnovncproxy_port=7000\n",
			[]assignment{{key{"DEFAULT", "my_ip"}, "10.0.0.1", pos{"f", 4}}, {key{"vnc", "enabled"}, "false", pos{"f", 6}}, {key{"vnc", "novncproxy_port"}, "7000", pos{"f", 7}}}, ""},
		{"quotes stripped once, only when matching", "[a]\nx = \"q u\"\ny = 'single'\nz = \"mixed'\nw = \"\"\"\n",
			[]assignment{{key{"a", "x"}, "q u", pos{"f", 2}}, {key{"a", "y"}, "single", pos{"f", 3}}, {key{"a", "z"}, "\"mixed'", pos{"f", 4}}, {key{"a", "w"}, "\"", pos{"f", 5}}}, ""},
		{"the first separator wins; values keep the rest", "[a]\nurl = http://h:6080/x?a=b\nusername = =\ntime: 10:30\n",
			[]assignment{{key{"a", "url"}, "http://h:6080/x?a=b", pos{"f", 2}}, {key{"a", "username"}, "=", pos{"f", 3}}, {key{"a", "time"}, "10:30", pos{"f", 4}}}, ""},
		{"an inline # is part of the value", "[a]\nx = 1 # not a comment\n", []assignment{{key{"a", "x"}, "1 # not a comment", pos{"f", 2}}}, ""},
		{"multi-line values: indented lines continue, a blank line ends", "[a]\nx = one,\n  two,\n\tthree\n\ny = 2\n",
			[]assignment{{key{"a", "x"}, "one,\ntwo,\nthree", pos{"f", 2}}, {key{"a", "y"}, "2", pos{"f", 6}}}, ""},
		{"DOS line ends and a byte-order mark", "\ufeff[a]\r\nx = 1\r\n", []assignment{{key{"a", "x"}, "1", pos{"f", 2}}}, ""},
		{"assignment before a section", "x = 1\n", nil, "f:1: option before any [section]"},
		{"continuation without an option", "[a]\n  x\n", nil, "f:2: unexpected continuation line"},
		{"section without ]", "[a\n", nil, "f:1: invalid section"},
		{"empty section", "[]\n", nil, "f:1: empty section name"},
		{"line without a separator", "[a]\nx\n", nil, "f:2: no '=' or ':'"},
		{"empty name", "[a]\n= 1\n", nil, "f:2: empty option name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseINI(strings.NewReader(tc.body), "f")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestValueTypes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"300", 300 * time.Second, false},
		{" 20 ", 20 * time.Second, false},
		{"0", 0, false},
		{"1m30s", 90 * time.Second, false},
		{"500ms", 500 * time.Millisecond, false},
		{"-1", 0, true},
		{"-5s", 0, true},
		{"1.5", 0, true},
		{"soon", 0, true},
		{"", 0, true},
	} {
		got, err := ParseSeconds(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSeconds(%q): got %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for _, tc := range []struct {
		in   string
		want bool
		err  bool
	}{
		{"true", true, false}, {"True", true, false}, {"yes", true, false}, {"on", true, false}, {"1", true, false},
		{"false", false, false}, {"NO", false, false}, {"off", false, false}, {"0", false, false},
		{"enabled", false, true}, {"", false, true},
	} {
		got, err := ParseBool(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBool(%q): got %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"a, b ,c", []string{"a", "b", "c"}},
		{"a,,b,", []string{"a", "b"}},
		{"one,\ntwo", []string{"one", "two"}},
		{" ", nil},
	} {
		if got := ParseList(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseList(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, d := range []time.Duration{0, 10 * time.Second, 1500 * time.Millisecond} {
		if back, err := ParseSeconds(FormatSeconds(d)); err != nil || back != d {
			t.Errorf("FormatSeconds(%v) = %q reads back as %v, %v", d, FormatSeconds(d), back, err)
		}
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	first := write(t, dir, "first.conf", "[vnc]\nnovncproxy_port = 7000\nnovncproxy_base_url = http://first/\n[consoleauth]\ntoken_ttl = 30\n[vncgate]\nidle_timeout = 60\n")
	second := write(t, dir, "second.conf", "[vnc]\nnovncproxy_port = 7001\n[vncgate]\nidle_timeout = 2m\n")
	confd := filepath.Join(dir, "conf.d")
	write(t, dir, "conf.d/20-b.conf", "[vnc]\nnovncproxy_base_url = http://20-b/\n")
	write(t, dir, "conf.d/10-a.conf", "[vnc]\nnovncproxy_base_url = http://10-a/\n[console]\nallowed_origins = a.example\n")
	write(t, dir, "conf.d/ignored.txt", "[vnc]\nnovncproxy_base_url = http://not-a-conf-file/\n")
	t.Setenv("VNCGATE_NOVNCPROXY_PORT", "7100")
	t.Setenv("VNCGATE_TOKEN_TTL", "45")

	o, _, err := load(t, "--config-file", first, "--config_file="+second, "--config-dir", confd, "--token_ttl=50", "--allowed_origins=flag.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"novncproxy_port: environment beats files", o.Port, 7100},
		{"token_ttl: flag beats environment", o.TTL, 50 * time.Second},
		{"allowed_origins: flag beats files", o.Origins, []string{"flag.example"}},
		{"novncproxy_base_url: the directory's last file, read after the files", o.BaseURL, "http://20-b/"},
		{"idle_timeout: the later file wins, Go duration", o.Idle, 2 * time.Minute},
		{"enabled: default", o.Enabled, true},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}

	// A --config-dir is read where it stands among the --config-files.
	o, _, err = load(t, "--config-dir", confd, "--config-file", first)
	if err != nil {
		t.Fatal(err)
	}
	if o.BaseURL != "http://first/" {
		t.Errorf("--config-dir then --config-file: got %q, want the file's", o.BaseURL)
	}

	// Without flags naming files, the environment may name them.
	t.Setenv("VNCGATE_CONFIG_FILE", first+","+second)
	t.Setenv("VNCGATE_CONFIG_DIR", confd)
	o, n, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if o.Idle != 2*time.Minute || o.BaseURL != "http://20-b/" || len(n.Files) != 4 {
		t.Errorf("VNCGATE_CONFIG_FILE/DIR: got idle %v, base %q, files %q", o.Idle, o.BaseURL, n.Files)
	}
}

// TestSections: each option is read from its own section only, whatever
// other sections hold under the same name.
func TestSections(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "nova.conf", `[DEFAULT]
novncproxy_port = 1
token_ttl = 1
idle_timeout = 1
[spice]
enabled = false
[libvirt]
connection_uri = qemu+tcp://h/system
[serial_console]
enabled = true
cert = /not/this.pem
[DEFAULT]
cert = /etc/nova/self.pem
ssl_only = yes
`)
	o, n, err := load(t, "--config-file", f)
	if err != nil {
		t.Fatal(err)
	}
	want := opts{Port: 6080, BaseURL: "http://127.0.0.1:6080/vnc_lite.html", Enabled: true, TTL: 600 * time.Second,
		Cert: "/etc/nova/self.pem", SSLOnly: true, Proxy: "127.0.0.1", URI: "qemu+tcp://h/system", Format: "json"}
	if !reflect.DeepEqual(*o, want) {
		t.Errorf("got  %+v\nwant %+v", *o, want)
	}
	if n.Ignored != 6 || !reflect.DeepEqual(n.IgnoredSections, []string{"serial_console", "spice"}) {
		t.Errorf("notes: got %d ignored in %q, want 6 in [serial_console spice]", n.Ignored, n.IgnoredSections)
	}
}

func TestInterpolation(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		args       []string
		want       string // server_proxyclient_address
		err        string
	}{
		{"$name from [DEFAULT]", "[DEFAULT]\nmy_ip = 10.0.0.5\n[vnc]\nserver_proxyclient_address = $my_ip\n", nil, "10.0.0.5", ""},
		{"${name} inside text", "[DEFAULT]\nstate_path = /var/lib/nova\n[vnc]\nserver_proxyclient_address = ${state_path}/x\n", nil, "/var/lib/nova/x", ""},
		{"chains", "[DEFAULT]\nmy_ip = $other\nother = 10.1.1.1\n[vnc]\nserver_proxyclient_address = $my_ip\n", nil, "10.1.1.1", ""},
		{"the same section first", "[DEFAULT]\nnovncproxy_host = default\n[vnc]\nnovncproxy_host = vnc\nserver_proxyclient_address = $novncproxy_host\n", nil, "vnc", ""},
		{"$section.name", "[libvirt]\nhost = h\n[vnc]\nserver_proxyclient_address = $libvirt.host\n", nil, "h", ""},
		{"$$ and \\$ are a dollar", "[vnc]\nserver_proxyclient_address = a$$b\\$c\n", nil, "a$b$c", ""},
		{"a lone $ stays", "[vnc]\nserver_proxyclient_address = 5$ $1\n", nil, "5$ $1", ""},
		{"a flag value is what the reference sees", "[vnc]\nserver_proxyclient_address = $my_ip\n", []string{"--my_ip=192.0.2.9"}, "192.0.2.9", ""},
		{"my_ip defaults to this host's address", "[vnc]\nserver_proxyclient_address = $my_ip\n", nil, MyIP(), ""},
		{"unknown reference", "[vnc]\nserver_proxyclient_address = $nope\n", nil, "", "f.conf:2: [vnc] server_proxyclient_address: $nope: no value for [DEFAULT] nope"},
		{"loop", "[DEFAULT]\na = $b\nb = $a\n[vnc]\nserver_proxyclient_address = $a\n", nil, "", "loops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := write(t, dir, "f.conf", tc.body)
			o, _, err := load(t, append([]string{"--config-file", f}, tc.args...)...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Proxy != tc.want {
				t.Errorf("got %q, want %q", o.Proxy, tc.want)
			}
		})
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body, want string
	}{
		{"misspelt option in [vnc]", "[vnc]\n\nnovncproxy_prot = 6080\n", "f.conf:3: unknown option [vnc] novncproxy_prot (neither Nova's nor vncgate's); did you mean novncproxy_port?"},
		{"misspelt option in [vncgate]", "[vncgate]\nidle_timout = 5\n", "f.conf:2: unknown option [vncgate] idle_timout (neither Nova's nor vncgate's); did you mean idle_timeout?"},
		{"misspelt option in [console]", "[console]\nallowed_origin = x\n", "f.conf:2: unknown option [console] allowed_origin"},
		{"option in the wrong section", "[vnc]\ntoken_ttl = 30\n", "f.conf:2: [vnc] token_ttl: token_ttl is an option of [consoleauth], not [vnc]"},
		{"an old flat vncgate file", "token_ttl = 30\n", "f.conf:1: option before any [section] (files are nova.conf's syntax: vncgate's own options go under [vncgate])"},
		{"bad integer", "[vnc]\nnovncproxy_port = http\n", `f.conf:2: [vnc] novncproxy_port = "http": want an integer`},
		{"bad bool", "[DEFAULT]\nssl_only = maybe\n", `f.conf:2: [DEFAULT] ssl_only = "maybe": want true or false`},
		{"negative seconds", "[consoleauth]\ntoken_ttl = -1\n", `f.conf:2: [consoleauth] token_ttl = "-1"`},
		{"bad choice", "[vncgate]\nlog_format = xml\n", `want json or text, got "xml"`},
		{"syntax", "[vnc]\nnovncproxy_port\n", "f.conf:2: no '=' or ':'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := write(t, dir, "f.conf", tc.body)
			_, _, err := load(t, "--config-file", f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), f) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		env  [2]string
		want string
	}{
		{"missing file", []string{"--config-file", filepath.Join(dir, "absent.conf")}, [2]string{}, "config file"},
		{"missing dir", []string{"--config-dir", filepath.Join(dir, "absent.d")}, [2]string{}, "config dir"},
		{"bad environment", nil, [2]string{"VNCGATE_NOVNCPROXY_PORT", "x"}, `environment VNCGATE_NOVNCPROXY_PORT="x"`},
		{"bad flag", []string{"--token_ttl=-3"}, [2]string{}, "token_ttl"},
		{"unknown flag", []string{"--nope=1"}, [2]string{}, "flag provided but not defined: -nope"},
		{"stray argument", []string{"extra"}, [2]string{}, `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env[0] != "" {
				t.Setenv(tc.env[0], tc.env[1])
			}
			_, _, err := load(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestNotOurs: what a service leaves alone is ignored, counted or warned
// about, never an error.
func TestNotOurs(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "nova.conf", `[DEFAULT]
transport_url = rabbit://
misspelt_but_default_is_not_strict = 1
record = /tmp/rec
daemon = false
vnc_enabled = false
[vnc]
server_listen = 0.0.0.0
keymap = en-us
auth_schemes = vencrypt,none
vencrypt_ca_certs = /etc/pki/ca.pem
xvpvncproxy_port = 6081
[vncgate]
registration_ttl = 5
[database]
connection = sqlite://
[scheduler]
whatever = 1
`)
	o, n, err := load(t, "--config-file", f)
	if err != nil {
		t.Fatal(err)
	}
	if o.Enabled {
		t.Error("[DEFAULT] vnc_enabled = false (Nova's deprecated name): got enabled, want disabled")
	}
	wantUnsupported := []string{
		"[DEFAULT] record (" + f + ":4): session recording is not implemented",
	}
	if !reflect.DeepEqual(n.Unsupported, wantUnsupported) {
		t.Errorf("unsupported:\ngot  %q\nwant %q", n.Unsupported, wantUnsupported)
	}
	if len(n.Deprecated) != 1 || !strings.Contains(n.Deprecated[0], "[DEFAULT] vnc_enabled") {
		t.Errorf("deprecated: got %q, want [DEFAULT] vnc_enabled", n.Deprecated)
	}
	// transport_url, misspelt…, daemon (harmless), server_listen, keymap,
	// auth_schemes, vencrypt_ca_certs (the proxies'), xvpvncproxy_port,
	// registration_ttl, connection, whatever.
	if n.Ignored != 11 || !reflect.DeepEqual(n.IgnoredSections, []string{"database", "scheduler"}) {
		t.Errorf("ignored: got %d in %q, want 11 in [database scheduler]", n.Ignored, n.IgnoredSections)
	}

	// Another service is not warned about the proxies' options, and a
	// strict section it does not read is not checked.
	s := New("consoleauth")
	var ttl time.Duration
	s.Seconds(&ttl, "consoleauth", "token_ttl", 600*time.Second, "")
	bad := write(t, dir, "bad.conf", "[vnc]\nauth_schemes = vencrypt\nnot_an_option = 1\n")
	n, err = s.Load([]string{"--config-file", bad})
	if err != nil || len(n.Unsupported) != 0 {
		t.Errorf("consoleauth reading [vnc] it does not read: got %v, unsupported %q; want neither", err, n.Unsupported)
	}
}

// TestDeprecatedNames: Nova's old names work, and the later file wins
// whichever name it uses.
func TestDeprecatedNames(t *testing.T) {
	dir := t.TempDir()
	old := write(t, dir, "old.conf", "[DEFAULT]\nconsole_token_ttl = 60\nconsole_allowed_origins = old.example\n")
	cur := write(t, dir, "new.conf", "[consoleauth]\ntoken_ttl = 90\n")
	o, _, err := load(t, "--config-file", old, "--config-file", cur)
	if err != nil {
		t.Fatal(err)
	}
	if o.TTL != 90*time.Second || !reflect.DeepEqual(o.Origins, []string{"old.example"}) {
		t.Errorf("got ttl %v origins %q, want 90s from the new name and old.example from the old", o.TTL, o.Origins)
	}
	o, _, err = load(t, "--config-file", cur, "--config-file", old)
	if err != nil {
		t.Fatal(err)
	}
	if o.TTL != 60*time.Second {
		t.Errorf("old name in the later file: got %v, want 60s", o.TTL)
	}
}

// TestNovaSample reads Nova's own generated nova.conf (every option, as
// Debian ships it) with a site file on top.
func TestNovaSample(t *testing.T) {
	sample := novaconf.Sample(t)
	site := write(t, t.TempDir(), "site.conf", `[DEFAULT]
my_ip = 10.0.0.7
[vnc]
novncproxy_base_url = "https://console.example.com/vnc_lite.html"
server_proxyclient_address = $my_ip
[console]
allowed_origins = console.example.com,
  portal.example.com
[consoleauth]
token_ttl = 300
`)
	o, n, err := load(t, "--config-file", sample, "--config-file", site)
	if err != nil {
		t.Fatal(err)
	}
	if o.BaseURL != "https://console.example.com/vnc_lite.html" || o.Proxy != "10.0.0.7" || o.TTL != 300*time.Second ||
		!reflect.DeepEqual(o.Origins, []string{"console.example.com", "portal.example.com"}) || o.Port != 6080 {
		t.Errorf("got %+v", *o)
	}
	if len(n.Unsupported) != 0 || len(n.Files) != 2 || !slices.Contains(n.IgnoredSections, "keystone_authtoken") || n.Ignored < 20 {
		t.Errorf("notes: got %+v; want nothing unsupported, 2 files, Nova's many other sections ignored", n)
	}
}

func TestHelp(t *testing.T) {
	s, _ := newSet("novnc-proxy")
	var out bytes.Buffer
	s.Output = &out
	if _, err := s.Load([]string{"-help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"--config-file FILE", "[vnc]\n  --novncproxy_port", "--vnc_enabled (file: enabled)", `(default "600")`, "[libvirt]\n  --libvirt_uri (file: connection_uri)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDeclaringUncataloguedOptionsPanics(t *testing.T) {
	for _, tc := range []struct{ section, name string }{{"vnc", "novncproxy_prot"}, {"vnc", "vencrypt_client_kee"}, {"DEFAULT", "vnc_enabled"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("declaring [%s] %s: no panic", tc.section, tc.name)
				}
			}()
			var v string
			New("x").String(&v, tc.section, tc.name, "", "")
		}()
	}
}

func TestListenAddr(t *testing.T) {
	for _, tc := range []struct {
		host    string
		ipv6    bool
		network string
		address string
	}{
		{"0.0.0.0", false, "tcp", "0.0.0.0:6080"},
		{"0.0.0.0", true, "tcp", "0.0.0.0:6080"},
		{"::", true, "tcp", "[::]:6080"},
		{"console.example.com", false, "tcp", "console.example.com:6080"},
		{"console.example.com", true, "tcp6", "console.example.com:6080"},
		{"10.0.0.1", true, "tcp", "10.0.0.1:6080"},
	} {
		n, a := ListenAddr(tc.host, 6080, tc.ipv6)
		if n != tc.network || a != tc.address {
			t.Errorf("ListenAddr(%q, 6080, %v): got %s %s, want %s %s", tc.host, tc.ipv6, n, a, tc.network, tc.address)
		}
	}
}

func TestNotesLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	Notes{Files: []string{"nova.conf"}, Ignored: 3, IgnoredSections: []string{"database"}, Unsupported: []string{"[vnc] auth_schemes (nova.conf:1): why"}}.Log(log)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "level=DEBUG") || !strings.Contains(lines[0], "ignored_options=3") ||
		!strings.Contains(lines[1], "level=WARN") || !strings.Contains(lines[1], "auth_schemes") {
		t.Errorf("got\n%s\nwant one debug summary and one warning", buf.String())
	}
}
