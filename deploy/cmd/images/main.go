// Command images builds vncgate's container images (`make images`): one
// OCI image layout tar file per service in bin/images, offline and
// reproducibly (package deploy/images says what is in them).
//
// Time stamps come from SOURCE_DATE_EPOCH, else from the commit time of
// the checkout's HEAD, else the Unix epoch; the revision and version labels
// from git when the checkout is a git work tree.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vncgate/vncgate/deploy/images"
)

// systemCAs is where Debian and its kin keep the CA bundle, and where Go
// looks first.
const systemCAs = "/etc/ssl/certs/ca-certificates.crt"

func main() {
	var o images.Options
	var services, epoch string
	flag.StringVar(&o.Root, "root", "", "repository checkout (default: the folder of go.work above the working directory)")
	flag.StringVar(&o.Out, "out", "", "folder for the tar files (default: ROOT/bin/images)")
	flag.StringVar(&services, "services", "", "comma-separated services to build (default: all four)")
	flag.StringVar(&o.Arch, "arch", "", "GOARCH of binaries and images (default: this machine's)")
	flag.StringVar(&epoch, "epoch", os.Getenv("SOURCE_DATE_EPOCH"), "Unix time of every time stamp (default: $SOURCE_DATE_EPOCH, else HEAD's commit time, else 0)")
	flag.StringVar(&o.CACerts, "ca-certs", defaultCAs(), "PEM CA bundle to put at "+systemCAs+" in the images; empty leaves it out")
	flag.StringVar(&o.Repository, "repository", "vncgate", "image names are REPOSITORY/<service>:TAG")
	flag.StringVar(&o.Tag, "tag", "latest", "image tag")
	flag.StringVar(&o.Version, "version", "", "org.opencontainers.image.version (default: git describe --tags --always)")
	flag.StringVar(&o.Revision, "revision", "", "org.opencontainers.image.revision (default: git rev-parse HEAD)")
	flag.StringVar(&o.Source, "source", "", "org.opencontainers.image.source, the repository's URL (default: none)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, o, services, epoch); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, o images.Options, services, epoch string) error {
	if o.Root == "" {
		root, err := findRoot()
		if err != nil {
			return err
		}
		o.Root = root
	}
	if o.Out == "" {
		o.Out = filepath.Join(o.Root, "bin", "images")
	}
	if epoch == "" {
		epoch = git(o.Root, "log", "-1", "--format=%ct")
	}
	if epoch == "" {
		epoch = "0"
	}
	sec, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil || sec < 0 {
		return fmt.Errorf("epoch %q: want a Unix time in whole seconds", epoch)
	}
	o.Created = time.Unix(sec, 0)
	if o.Revision == "" {
		o.Revision = git(o.Root, "rev-parse", "HEAD")
	}
	if o.Version == "" {
		o.Version = git(o.Root, "describe", "--tags", "--always")
	}
	list := images.Services
	if services != "" {
		list = nil
		for _, name := range strings.Split(services, ",") {
			s, err := images.Lookup(strings.TrimSpace(name))
			if err != nil {
				return err
			}
			list = append(list, s)
		}
	}
	if o.CACerts == "" {
		fmt.Fprintln(os.Stderr, "images: no CA bundle: the images trust no server certificate unless one is mounted at "+systemCAs)
	}
	results, err := images.Build(ctx, o, list)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tFILE\tSIZE\tMANIFEST DIGEST")
	for _, r := range results {
		rel, err := filepath.Rel(o.Root, r.Path)
		if err != nil || strings.HasPrefix(rel, "..") {
			rel = r.Path
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f MiB\t%s\n", r.Name, rel, float64(r.Size)/(1<<20), r.Digest)
	}
	fmt.Fprintf(tw, "created %s; load one with `docker load -i FILE` or `skopeo copy oci-archive:FILE …`\n", o.Created.UTC().Format(time.RFC3339))
	return tw.Flush()
}

// defaultCAs is the build machine's CA bundle, or "" without one.
func defaultCAs() string {
	if _, err := os.Stat(systemCAs); err != nil {
		return ""
	}
	return systemCAs
}

// findRoot is the folder of the go.work above the working directory.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory: give -root")
		}
		dir = parent
	}
}

// git runs git in dir and returns its trimmed output, "" when git fails
// (no git, or not a work tree): the labels are then left out.
func git(dir string, args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
