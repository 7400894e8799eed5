package images

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// addLayer is a layer and what it holds, for the image's history.
type addLayer struct {
	layer v1.Layer
	what  string
}

// image assembles s's image from layers on an empty base.
func image(opts Options, s Service, layers []addLayer) (v1.Image, error) {
	created := v1.Time{Time: opts.created()}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: opts.arch(),
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			User:         fmt.Sprintf("%d:%d", UID, GID),
			Entrypoint:   []string{BinDir + "/" + s.Name},
			Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			WorkingDir:   "/",
			ExposedPorts: exposedPorts(s),
			Labels:       labels(opts, s),
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer:     l.layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: created, CreatedBy: "vncgate images", Comment: l.what},
		}
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	return mutate.ConfigMediaType(img, types.OCIConfigJSON), nil
}

// writeArchive writes img as an OCI image layout in a tar file,
// opts.Out/<service>.tar, replacing it only once complete.
func writeArchive(opts Options, s Service, img v1.Image) (Result, error) {
	name := opts.Name(s.Name)
	digest, err := img.Digest()
	if err != nil {
		return Result{}, err
	}
	t := fileTree{}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

	rawManifest, err := img.RawManifest()
	if err != nil {
		return Result{}, err
	}
	t.file(blob(digest), 0o644, rawManifest)
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return Result{}, err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return Result{}, err
	}
	t.file(blob(configName), 0o644, rawConfig)
	layers, err := img.Layers()
	if err != nil {
		return Result{}, err
	}
	var layerPaths []string
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return Result{}, err
		}
		rc, err := l.Compressed()
		if err != nil {
			return Result{}, err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return Result{}, err
		}
		t.file(blob(h), 0o644, b)
		layerPaths = append(layerPaths, blob(h))
	}

	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			Annotations: map[string]string{
				// The tag, as the OCI layout spec has it; containerd
				// and BuildKit take the full name from the other.
				"org.opencontainers.image.ref.name": tagOf(name),
				"io.containerd.image.name":          name,
			},
			Platform: &v1.Platform{OS: "linux", Architecture: opts.arch()},
		},
	})
	rawIndex, err := idx.RawManifest()
	if err != nil {
		return Result{}, err
	}
	t.file("index.json", 0o644, rawIndex)
	t.file("oci-layout", 0o644, []byte(`{"imageLayoutVersion":"1.0.0"}`))
	// Docker's own archive format beside the layout: `docker load` before
	// Docker 25 reads only this.
	dockerManifest, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{blob(configName), []string{name}, layerPaths}})
	if err != nil {
		return Result{}, err
	}
	t.file("manifest.json", 0o644, dockerManifest)

	dst := filepath.Join(opts.Out, s.Name+".tar")
	f, err := os.CreateTemp(opts.Out, "."+s.Name+".tar.*")
	if err != nil {
		return Result{}, err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if err := t.writeTar(f, opts.created()); err != nil {
		f.Close()
		return Result{}, err
	}
	if err := f.Close(); err != nil {
		return Result{}, err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return Result{}, err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return Result{}, err
	}
	st, err := os.Stat(dst)
	if err != nil {
		return Result{}, err
	}
	return Result{Service: s.Name, Path: dst, Name: name, Digest: digest, Size: st.Size()}, nil
}

// tagOf is the tag of repo:tag.
func tagOf(name string) string {
	for i := len(name) - 1; i >= 0 && name[i] != '/'; i-- {
		if name[i] == ':' {
			return name[i+1:]
		}
	}
	return "latest"
}
