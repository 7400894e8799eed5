package helm

import (
	"fmt"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Release names a rendering: release name, namespace, and the Kubernetes
// version the chart is rendered for ("v1.37.2").
type Release struct {
	Name, Namespace, KubeVersion string
}

// Render renders the chart in dir with values, client-only as `helm
// template` does (no cluster is asked anything), and returns its objects
// in Helm's install order. A template's fail (a missing or bad value) is
// the returned error.
func Render(dir string, values map[string]any, rel Release) ([]*unstructured.Unstructured, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	kv, err := chartutil.ParseKubeVersion(rel.KubeVersion)
	if err != nil {
		return nil, fmt.Errorf("kubernetes version %q: %w", rel.KubeVersion, err)
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = rel.Name
	install.Namespace = rel.Namespace
	install.KubeVersion = kv
	r, err := install.Run(chrt, values)
	if err != nil {
		return nil, err
	}
	return Objects(r.Manifest)
}

// Objects splits a multi-document manifest into objects, in its order;
// empty documents are skipped.
func Objects(manifest string) ([]*unstructured.Unstructured, error) {
	docs := releaseutil.SplitManifests(manifest)
	names := make([]string, 0, len(docs))
	for k := range docs {
		names = append(names, k)
	}
	// SplitManifests names documents manifest-0, manifest-1, …: keep that order.
	sort.Slice(names, func(i, j int) bool { return manifestIndex(names[i]) < manifestIndex(names[j]) })
	var out []*unstructured.Unstructured
	for _, name := range names {
		doc := docs[name]
		if strings.TrimSpace(doc) == "" {
			continue
		}
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", name, err, doc)
		}
		if string(j) == "null" { // only comments
			continue
		}
		// Unstructured's decoder keeps integers int64, as the apiserver's does.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", name, err, doc)
		}
		out = append(out, u)
	}
	return out, nil
}

func manifestIndex(name string) int {
	var i int
	fmt.Sscanf(name, "manifest-%d", &i)
	return i
}
