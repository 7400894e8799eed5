// Package images builds vncgate's container images offline and
// reproducibly: one OCI image layout per service, written as a tar file,
// assembled with go-containerregistry from an empty base. Nothing is pulled
// from a registry.
//
// Each image holds three layers: a base shared by all four (/etc/passwd and
// /etc/group naming the vncgate user, uid and gid 65532, /etc/nsswitch.conf,
// a world-writable /tmp, and the build machine's CA bundle when one is
// given), the noVNC library for novnc-proxy only, and the service's static
// binary at /usr/local/bin/<service>, which is the entrypoint. The image
// runs as "65532:65532" and writes nothing outside /tmp, so a read-only root
// file system works.
//
// Promises: the same source, Go toolchain, CA bundle and Options give
// byte-identical tar files. Binaries are built with CGO_ENABLED=0,
// -trimpath, -buildvcs=false and -ldflags "-s -w -buildid="; every time stamp in a layer, the
// config and the history is Options.Created; entries are sorted, owned by
// root, and their modes normalised (0644, or 0755 for directories and
// executables; /tmp 1777).
//
// Each tar file is an OCI image layout (oci-layout, index.json, blobs/) that
// also carries Docker's manifest.json, so that tools reading either format
// load it (`skopeo copy oci-archive:…` or `docker-archive:…`, `podman load`,
// `docker load`).
package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// UID and GID are the vncgate user's in every image (distroless's
// "nonroot" numbers, outside any host's range of system users).
const (
	UID = 65532
	GID = 65532
)

// BinDir is where the binary lives in the image. novnc-proxy finds the
// noVNC library at BinDir/web/node_modules/@novnc/novnc, the first place
// it looks (services/novnc-proxy/config.go noVNCCandidates), so the image
// needs no novnc_core_dir setting.
const BinDir = "/usr/local/bin"

// noVNCPackage is the npm package directory, relative to
// services/novnc-proxy/web in the checkout and to BinDir/web in the image.
const noVNCPackage = "node_modules/@novnc/novnc"

// Service is one image to build.
type Service struct {
	// Name is the directory under services/ and the binary's name.
	Name string
	// Description is the image's org.opencontainers.image.description.
	Description string
	// Ports are the TCP ports the service listens on by default, exposed
	// in the image config (each service's config.go holds the defaults).
	Ports []int
	// NoVNC adds the noVNC library next to the binary.
	NoVNC bool
}

// Services are vncgate's four services.
var Services = []Service{
	{Name: "consoleauth", Description: "vncgate consoleauth: mints and checks console tokens (gRPC 6090, Nova-shaped REST 6091)", Ports: []int{6090, 6091}},
	{Name: "compute-agent", Description: "vncgate compute-agent: tells consoleauth where each instance's VNC server listens (gRPC 6092)", Ports: []int{6092}},
	{Name: "novnc-proxy", Description: "vncgate novnc-proxy: the console page and WebSocket relay to VNC servers (HTTP(S) 6080)", Ports: []int{6080}, NoVNC: true},
	{Name: "xvp-proxy", Description: "vncgate xvp-proxy: the XVP protocol relay for Java VNC clients (TCP 6081)", Ports: []int{6081}},
}

// Lookup returns the service called name.
func Lookup(name string) (Service, error) {
	var names []string
	for _, s := range Services {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Service{}, fmt.Errorf("unknown service %q: want one of %s", name, strings.Join(names, ", "))
}

// Options say how to build.
type Options struct {
	// Root is the repository checkout (holding go.work and services/).
	Root string
	// Out is the directory the tar files are written to; it is created.
	Out string
	// Arch is the GOARCH of the binaries and the image ("" is the build
	// machine's).
	Arch string
	// Created is every time stamp in the images; SOURCE_DATE_EPOCH by
	// convention. The zero Time means the Unix epoch.
	Created time.Time
	// CACerts is a PEM bundle copied to /etc/ssl/certs/ca-certificates.crt
	// (where Go looks first); "" leaves it out.
	CACerts string
	// Repository prefixes image names: Repository/<service>:Tag.
	// "" is "vncgate"; Tag "" is "latest".
	Repository, Tag string
	// Version, Revision and Source fill the org.opencontainers.image labels
	// of those names; empty ones are left out.
	Version, Revision, Source string
}

func (o Options) arch() string {
	if o.Arch == "" {
		return runtime.GOARCH
	}
	return o.Arch
}

func (o Options) created() time.Time {
	if o.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return o.Created.UTC()
}

// Name is the image's name, Repository/<service>:Tag.
func (o Options) Name(service string) string {
	repo, tag := o.Repository, o.Tag
	if repo == "" {
		repo = "vncgate"
	}
	if tag == "" {
		tag = "latest"
	}
	return repo + "/" + service + ":" + tag
}

// Result is one image written.
type Result struct {
	Service string
	// Path is the tar file.
	Path string
	// Name is the image's name (Options.Name).
	Name string
	// Digest is the image manifest's digest, what a registry would report.
	Digest v1.Hash
	// Size is the tar file's size in bytes.
	Size int64
}

// Build compiles the services' binaries and writes one image tar file per
// service into opts.Out, as <service>.tar.
func Build(ctx context.Context, opts Options, services []Service) ([]Result, error) {
	if opts.Root == "" || opts.Out == "" {
		return nil, errors.New("a checkout (Root) and an output folder (Out) are required")
	}
	if len(services) == 0 {
		return nil, errors.New("no service to build")
	}
	if _, err := os.Stat(filepath.Join(opts.Root, "go.work")); err != nil {
		return nil, fmt.Errorf("%s is no vncgate checkout: %w", opts.Root, err)
	}
	var ca []byte
	if opts.CACerts != "" {
		var err error
		if ca, err = os.ReadFile(opts.CACerts); err != nil {
			return nil, fmt.Errorf("ca certificates: %w", err)
		}
	}
	noVNC := filepath.Join(opts.Root, "services", "novnc-proxy", "web", filepath.FromSlash(noVNCPackage))
	for _, s := range services {
		if !s.NoVNC {
			continue
		}
		if _, err := os.Stat(filepath.Join(noVNC, "core", "rfb.js")); err != nil {
			return nil, fmt.Errorf("noVNC library not found at %s (run `make deps`, or `npm ci` in services/novnc-proxy/web): %w", noVNC, err)
		}
	}
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, err
	}
	binDir, err := os.MkdirTemp("", "vncgate-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(binDir)
	if err := buildBinaries(ctx, opts, services, binDir); err != nil {
		return nil, err
	}

	base, err := baseLayer(opts.created(), ca)
	if err != nil {
		return nil, err
	}
	var results []Result
	for _, s := range services {
		layers := []addLayer{{base, "base: /etc/passwd, /etc/group, /tmp, CA certificates"}}
		if s.NoVNC {
			l, err := treeLayer(opts.created(), noVNC, BinDir+"/web/"+noVNCPackage)
			if err != nil {
				return nil, err
			}
			layers = append(layers, addLayer{l, "the noVNC library at " + BinDir + "/web/" + noVNCPackage})
		}
		bin, err := binaryLayer(opts.created(), filepath.Join(binDir, s.Name), BinDir+"/"+s.Name)
		if err != nil {
			return nil, err
		}
		layers = append(layers, addLayer{bin, "the " + s.Name + " binary"})
		img, err := image(opts, s, layers)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		r, err := writeArchive(opts, s, img)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// buildBinaries compiles the services in one go command (so packages they
// share are compiled once) into dir. -buildvcs=false keeps the work tree's
// git state out of the binaries (the revision is a label instead), as a
// workspace build does anyway.
func buildBinaries(ctx context.Context, opts Options, services []Service, dir string) error {
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", dir + string(filepath.Separator)}
	for _, s := range services {
		args = append(args, "./services/"+s.Name)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = opts.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+opts.arch(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// labels are the image's org.opencontainers.image labels.
func labels(opts Options, s Service) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "vncgate-" + s.Name,
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.created":     opts.created().Format(time.RFC3339),
		"org.opencontainers.image.vendor":      "vncgate",
	}
	for k, v := range map[string]string{"version": opts.Version, "revision": opts.Revision, "source": opts.Source} {
		if v != "" {
			l["org.opencontainers.image."+k] = v
		}
	}
	return l
}

// exposedPorts is the config's ExposedPorts of s.
func exposedPorts(s Service) map[string]struct{} {
	m := map[string]struct{}{}
	for _, p := range s.Ports {
		m[strconv.Itoa(p)+"/tcp"] = struct{}{}
	}
	return m
}
