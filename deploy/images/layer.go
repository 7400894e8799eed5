package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fileTree is the content of one tar file: directories and regular files
// by slash-separated path without a leading slash. Writing it is
// deterministic: entries sorted by path, parents before children, one time
// stamp, root owner.
type fileTree map[string]entry

type entry struct {
	dir  bool
	mode int64
	data []byte
}

// add puts an entry at name, adding missing parent directories (0755).
func (t fileTree) add(name string, e entry) {
	name = strings.Trim(path.Clean("/"+name), "/")
	t[name] = e
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := t[d]; !ok {
			t[d] = entry{dir: true, mode: 0o755}
		}
	}
}

func (t fileTree) dir(name string, mode int64) { t.add(name, entry{dir: true, mode: mode}) }

func (t fileTree) file(name string, mode int64, data []byte) {
	t.add(name, entry{mode: mode, data: data})
}

// writeTar writes the tree as a tar stream with every time stamp mtime.
func (t fileTree) writeTar(w io.Writer, mtime time.Time) error {
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		e := t[n]
		h := &tar.Header{Name: n, Mode: e.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(e.data))}
		if e.dir {
			h.Name, h.Typeflag, h.Size = n+"/", tar.TypeDir, 0
		}
		// PAX for every entry, so that long names never switch the
		// format from one entry to the next; no access or change times.
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("tar %s: %w", n, err)
		}
	}
	return tw.Close()
}

// layer makes an OCI layer (gzip) of the tree.
func (t fileTree) layer(mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	if err := t.writeTar(&buf, mtime); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression), tarball.WithCompressedCaching)
}

// passwd and group name root and the vncgate user; no shell, no home.
var (
	passwd = fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nvncgate:x:%d:%d:vncgate:/nonexistent:/sbin/nologin\n", UID, GID)
	group  = fmt.Sprintf("root:x:0:\nvncgate:x:%d:\n", GID)
)

// baseLayer is the file system every image shares. ca, when not empty, is
// the CA bundle.
func baseLayer(mtime time.Time, ca []byte) (v1.Layer, error) {
	t := fileTree{}
	t.file("etc/passwd", 0o644, []byte(passwd))
	t.file("etc/group", 0o644, []byte(group))
	// Go's resolver assumes this order without the file; other tools a
	// debugging session may add do not.
	t.file("etc/nsswitch.conf", 0o644, []byte("hosts: files dns\n"))
	if len(ca) > 0 {
		t.file("etc/ssl/certs/ca-certificates.crt", 0o644, ca)
	}
	t.dir("tmp", 0o1777)
	t.dir(strings.TrimPrefix(BinDir, "/"), 0o755)
	return t.layer(mtime)
}

// binaryLayer holds the executable src at dst.
func binaryLayer(mtime time.Time, src, dst string) (v1.Layer, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	t := fileTree{}
	t.file(dst, 0o755, b)
	return t.layer(mtime)
}

// treeLayer holds the directory src at dst: directories and regular files
// only (anything else is an error, rather than a surprise in the image),
// modes normalised so that the build machine's umask does not show.
func treeLayer(mtime time.Time, src, dst string) (v1.Layer, error) {
	t := fileTree{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := path.Join(dst, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			t.dir(name, 0o755)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			t.file(name, mode, b)
		default:
			return fmt.Errorf("%s: %s is neither a directory nor a regular file", p, d.Type())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t.layer(mtime)
}
