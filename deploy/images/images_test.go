package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/vncgate/vncgate/testkit/certs"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// need skips the test when ok is false, or fails it under CI, where
// everything the test needs is installed (make deps) and it runs as root.
func need(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// TestImages builds all four images twice, checks the two builds are
// byte-identical and each image is what the package promises, then starts
// each binary from its image's unpacked root file system, read-only, as
// the image's user, in a mount namespace of its own: novnc-proxy serves
// the console page and noVNC, consoleauth reaches etcd and reports healthy,
// and every binary's -help names the ports its image exposes.
func TestImages(t *testing.T) {
	need(t, os.Geteuid() == 0, "chroot and mounts need root")
	for _, tool := range []string{"unshare", "mount", "chroot", "env", "sh"} {
		_, err := exec.LookPath(tool)
		need(t, err == nil, tool+" not found (util-linux, coreutils)")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(root, "services", "novnc-proxy", "web", noVNCPackage, "core", "rfb.js"))
	need(t, err == nil, "the noVNC library is not installed: run make deps")

	ca := certs.TestCA(t)
	caFiles, err := ca.WriteFiles(t.TempDir(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Root:     root,
		Out:      t.TempDir(),
		Created:  time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
		CACerts:  caFiles.CA,
		Tag:      "test",
		Version:  "v0.0.0-test",
		Revision: "0123456789abcdef0123456789abcdef01234567",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	first, err := Build(ctx, opts, Services)
	if err != nil {
		t.Fatal(err)
	}
	again := opts
	again.Out = t.TempDir()
	second, err := Build(ctx, again, Services)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(Services) || len(second) != len(Services) {
		t.Fatalf("got %d and %d images, want %d", len(first), len(second), len(Services))
	}
	for i, r := range first {
		if a, b := fileSum(t, r.Path), fileSum(t, second[i].Path); a != b || r.Digest != second[i].Digest {
			t.Errorf("%s: two builds differ: files %s and %s, manifests %s and %s", r.Service, a, b, r.Digest, second[i].Digest)
		}
		t.Logf("%s: %s, %d bytes, manifest %s", r.Name, filepath.Base(r.Path), r.Size, r.Digest)
	}

	rootfs := map[string]string{}
	configs := map[string]v1.Config{}
	for i, s := range Services {
		r := first[i]
		dir := t.TempDir() // outlives the subtest: the services run from it below
		t.Run(s.Name, func(t *testing.T) {
			img := load(t, r)
			if err := validate.Image(img); err != nil {
				t.Fatalf("validate: %v", err)
			}
			cfg := checkConfig(t, img, opts, s)
			checkLayers(t, img, opts.Created)
			unpack(t, img, dir)
			checkFiles(t, dir, s, caFiles.CA)
			rootfs[s.Name], configs[s.Name] = dir, cfg

			out, err := runToEnd(t, dir, cfg, "-help")
			if err != nil {
				t.Fatalf("-help from the image: %v\n%s", err, out)
			}
			for _, p := range s.Ports {
				if !strings.Contains(out, strconv.Itoa(p)+`"`) {
					t.Errorf("-help names no default ending in port %d, which the image exposes:\n%s", p, out)
				}
			}
		})
	}
	if t.Failed() {
		return
	}

	t.Run("novnc-proxy serves its page from a read-only root", func(t *testing.T) {
		p := start(t, rootfs["novnc-proxy"], configs["novnc-proxy"],
			"--novncproxy_host=127.0.0.1", "--novncproxy_port=0", "--consoleauth_address=127.0.0.1:1",
			"--admin_listen=") // no fixed admin port: tests run side by side
		rec := p.waitLog(t, func(r map[string]any) bool {
			return strings.Contains(str(r["msg"]), "listening") && str(r["addr"]) != ""
		})
		p.checkSandbox(t, rootfs["novnc-proxy"])
		base := "http://" + str(rec["addr"])
		for _, c := range []struct{ path, want string }{
			{"/vnc_lite.html", "vncgate/app.js"},
			{"/vncgate/app.js", "../novnc/core/rfb.js"},
			{"/novnc/core/rfb.js", "class RFB"},
		} {
			if body := get(t, base+c.path, http.StatusOK); !strings.Contains(body, c.want) {
				t.Errorf("GET %s: body has no %q", c.path, c.want)
			}
		}
		p.stop(t)
	})

	t.Run("consoleauth reaches etcd from a read-only root", func(t *testing.T) {
		srv := etcd.New(t, "127.0.0.1:0")
		args := []string{"--grpc_listen=127.0.0.1:0", "--rest_listen=127.0.0.1:0", "--etcd_endpoints=" + srv.Endpoint, "--admin_listen="}
		// REST bearer keys, where this consoleauth has them: a file as an
		// operator would mount it, holding no key (/healthz needs none).
		if help, _ := runToEnd(t, rootfs["consoleauth"], configs["consoleauth"], "-help"); strings.Contains(help, "api_keys_file") {
			keys := filepath.Join(rootfs["consoleauth"], "etc", "vncgate", "api-keys")
			if err := os.MkdirAll(filepath.Dir(keys), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(keys, []byte("# no keys: the image test calls /healthz only\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--api_keys_file=/etc/vncgate/api-keys")
		}
		p := start(t, rootfs["consoleauth"], configs["consoleauth"], args...)
		rec := p.waitLog(t, func(r map[string]any) bool { return str(r["rest"]) != "" && str(r["grpc"]) != "" })
		p.checkSandbox(t, rootfs["consoleauth"])
		healthz := "http://" + str(rec["rest"]) + "/healthz"
		// etcd is reached in the background: wait for /healthz to say so.
		deadline := time.Now().Add(30 * time.Second)
		for {
			last := ""
			resp, err := http.Get(healthz)
			if err != nil {
				last = err.Error()
			} else {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				last = resp.Status
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: no 200 within 30 s (last: %s)\n%s", healthz, last, p.output())
			}
			time.Sleep(100 * time.Millisecond) // the poll's pace, not a budget
		}
		p.stop(t)
	})
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// load reads r's tar file back as an OCI layout and returns its one image,
// checking the index and Docker's manifest.json name it.
func load(t *testing.T, r Result) v1.Image {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.Digest != r.Digest || d.Annotations["io.containerd.image.name"] != r.Name || d.Annotations["org.opencontainers.image.ref.name"] != "test" {
		t.Errorf("index.json: got %s %v, want %s named %s", d.Digest, d.Annotations, r.Digest, r.Name)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}

	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err == nil {
		err = json.Unmarshal(b, &docker)
	}
	if err != nil || len(docker) != 1 {
		t.Fatalf("manifest.json: %v %s", err, b)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"blobs/sha256/" + m.Config.Digest.Hex}
	for _, l := range m.Layers {
		want = append(want, "blobs/sha256/"+l.Digest.Hex)
	}
	got := append([]string{docker[0].Config}, docker[0].Layers...)
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(docker[0].RepoTags) != fmt.Sprint([]string{r.Name}) {
		t.Errorf("manifest.json: got %v tagged %v, want %v tagged %s", got, docker[0].RepoTags, want, r.Name)
	}
	return img
}

func checkConfig(t *testing.T, img v1.Image, opts Options, s Service) v1.Config {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	conf := cf.Config
	var ports []string
	for _, p := range s.Ports {
		ports = append(ports, strconv.Itoa(p)+"/tcp")
	}
	var exposed []string
	for p := range conf.ExposedPorts {
		exposed = append(exposed, p)
	}
	for _, c := range []struct{ what, got, want string }{
		{"user", conf.User, "65532:65532"},
		{"entrypoint", fmt.Sprint(conf.Entrypoint), fmt.Sprint([]string{"/usr/local/bin/" + s.Name})},
		{"os/arch", cf.OS + "/" + cf.Architecture, "linux/" + opts.arch()},
		{"created", cf.Created.UTC().String(), opts.Created.UTC().String()},
		{"exposed ports", fmt.Sprint(len(exposed)), fmt.Sprint(len(ports))},
		{"title", conf.Labels["org.opencontainers.image.title"], "vncgate-" + s.Name},
		{"revision", conf.Labels["org.opencontainers.image.revision"], opts.Revision},
		{"version", conf.Labels["org.opencontainers.image.version"], opts.Version},
		{"created label", conf.Labels["org.opencontainers.image.created"], "2024-05-06T07:08:09Z"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.what, c.got, c.want)
		}
	}
	for _, p := range ports {
		if _, ok := conf.ExposedPorts[p]; !ok {
			t.Errorf("exposed ports %v lack %s", exposed, p)
		}
	}
	for _, h := range cf.History {
		if !h.Created.Equal(opts.Created) {
			t.Errorf("history %q created %s, want %s", h.Comment, h.Created, opts.Created)
		}
	}
	return conf
}

// checkLayers checks every entry of every layer carries the one time stamp
// and belongs to root.
func checkLayers(t *testing.T, img v1.Image, created time.Time) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !h.ModTime.Equal(created) || h.Uid != 0 || h.Gid != 0 {
				t.Errorf("layer %d: %s: time %s owner %d:%d, want %s 0:0", i, h.Name, h.ModTime, h.Uid, h.Gid, created)
			}
		}
		rc.Close()
	}
}

// unpack writes img's file system into the empty directory dir, as a
// container runtime would, plus the mount point for /proc a runtime makes.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Clean("/" + h.Name)
		p := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, 0o600)
			}
		default:
			t.Fatalf("%s: entry type %c, want only directories and regular files", h.Name, h.Typeflag)
		}
		if err == nil {
			err = os.Lchown(p, h.Uid, h.Gid)
		}
		if err == nil {
			// Chmod, not the umask-filtered create mode; it keeps the sticky bit.
			err = os.Chmod(p, h.FileInfo().Mode())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "proc"), 0o555); err != nil {
		t.Fatal(err)
	}
	// TempDir is 0700: let uid 65532 through to the root.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func checkFiles(t *testing.T, dir string, s Service, caFile string) {
	t.Helper()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path     string
		mode     os.FileMode
		contains string
	}{
		{"etc/passwd", 0o644, "vncgate:x:65532:65532:"},
		{"etc/group", 0o644, "vncgate:x:65532:"},
		{"etc/ssl/certs/ca-certificates.crt", 0o644, string(ca)},
		{"tmp", os.ModeDir | os.ModeSticky | 0o777, ""},
		{"usr/local/bin/" + s.Name, 0o755, ""},
	} {
		st, err := os.Stat(filepath.Join(dir, c.path))
		if err != nil {
			t.Error(err)
			continue
		}
		if st.Mode() != c.mode {
			t.Errorf("/%s: mode %v, want %v", c.path, st.Mode(), c.mode)
		}
		if c.contains != "" {
			if b, _ := os.ReadFile(filepath.Join(dir, c.path)); !strings.Contains(string(b), c.contains) {
				t.Errorf("/%s holds no %q", c.path, c.contains)
			}
		}
	}
	_, err = os.Stat(filepath.Join(dir, "usr/local/bin/web", noVNCPackage, "core/rfb.js"))
	if s.NoVNC && err != nil {
		t.Errorf("no noVNC library: %v", err)
	} else if !s.NoVNC && err == nil {
		t.Errorf("%s carries the noVNC library", s.Name)
	}
}

// sandbox mounts, in the mount namespace unshare made, the root file
// system read-only with /proc and a tmpfs /tmp, as a container runtime
// with readOnlyRootFilesystem and an emptyDir on /tmp would; then runs the
// rest of its arguments. Every exec keeps the process ID, so the test's
// process is the service's.
const sandbox = `set -eu
root=$1; shift
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -o remount,bind,ro,nosuid,nodev "$root"
exec "$@"
`

// command runs cfg's entrypoint with args from the root file system dir,
// as cfg's user, with only cfg's environment.
func command(t *testing.T, ctx context.Context, dir string, cfg v1.Config, args ...string) *exec.Cmd {
	t.Helper()
	tool := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	argv := []string{"--mount", "--propagation", "private", "--", tool("sh"), "-c", sandbox, "sh", dir, tool("env"), "-i"}
	argv = append(argv, cfg.Env...)
	argv = append(argv, tool("chroot"), "--userspec="+cfg.User, dir)
	argv = append(argv, cfg.Entrypoint...)
	argv = append(argv, cfg.Cmd...)
	argv = append(argv, args...)
	return exec.CommandContext(ctx, tool("unshare"), argv...)
}

// runToEnd runs the image's binary to its exit and returns its output.
func runToEnd(t *testing.T, dir string, cfg v1.Config, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := command(t, ctx, dir, cfg, args...).CombinedOutput()
	return string(out), err
}

// proc is a service started from an image.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit, once done

	mu      sync.Mutex
	out     bytes.Buffer        // all of stderr
	records chan map[string]any // JSON log records as they come
}

func start(t *testing.T, dir string, cfg v1.Config, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: command(t, context.Background(), dir, cfg, args...), done: make(chan struct{}), records: make(chan map[string]any, 1000)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.Write(sc.Bytes())
			p.out.WriteByte('\n')
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				select {
				case p.records <- rec:
				default: // nobody is waiting for this many
				}
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLog returns the first log record match accepts; it fails the test
// when the process exits first or a minute passes.
func (p *proc) waitLog(t *testing.T, match func(map[string]any) bool) map[string]any {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case r := <-p.records:
			if match(r) {
				return r
			}
		case <-p.done:
			t.Fatalf("exited before the awaited log record: %v\n%s", p.err, p.output())
		case <-timeout:
			t.Fatalf("no awaited log record within a minute:\n%s", p.output())
		}
	}
}

// checkSandbox checks the service runs as the image's user, without
// other groups, chrooted to dir, which it cannot write to.
func (p *proc) checkSandbox(t *testing.T, dir string) {
	t.Helper()
	pid := strconv.Itoa(p.cmd.Process.Pid)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	want := map[string]string{"Uid": "65532 65532 65532 65532", "Gid": "65532 65532 65532 65532"}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("%s: got %q, want %q", k, fields[k], v)
		}
	}
	// chroot, like runc, may list the primary group again.
	if g := fields["Groups"]; g != "" && g != "65532" {
		t.Errorf("supplementary groups: got %q, want none but 65532", g)
	}
	if got, err := os.Readlink("/proc/" + pid + "/root"); err != nil || got != dir {
		t.Errorf("root: got %q (%v), want %q", got, err, dir)
	}
	if err := os.WriteFile("/proc/"+pid+"/root/probe", nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into its root: got %v, want %v", err, syscall.EROFS)
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", p.err, p.output())
		}
	case <-time.After(time.Minute):
		t.Errorf("still running a minute after SIGTERM:\n%s", p.output())
	}
}

func get(t *testing.T, url string, want int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Errorf("GET %s: %s, want %d", url, resp.Status, want)
	}
	return string(b)
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
