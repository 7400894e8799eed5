package helm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/kube-openapi/pkg/spec3"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"
)

// Schema is the Kubernetes API schema of one release, read from its
// OpenAPI v3 documents. Validate checks an object two ways, both the
// apiserver's own code:
//   - structure (managedfields' TypeConverter, the structured-merge-diff
//     schema server-side apply and strict field validation use): a field
//     the schema does not declare, a value of the wrong type, or a
//     duplicate key in a keyed list (two containers of one name) fails;
//   - constraints (kube-openapi's validator, the one CRD schemas are
//     checked with): required fields, enums, formats and bounds.
type Schema struct {
	types   managedfields.TypeConverter
	schemas map[string]*spec.Schema
	byGVK   map[schema.GroupVersionKind]string
	mu      sync.Mutex
	// expanded caches the schemas of kinds with their $refs inlined.
	expanded map[string]*spec.Schema
}

// LoadSchema reads every *_openapi.json of dir (api/openapi-spec/v3 of the
// k8s.io/kubernetes module).
func LoadSchema(dir string) (*Schema, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_openapi.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *_openapi.json files", dir)
	}
	s := &Schema{schemas: map[string]*spec.Schema{}, byGVK: map[schema.GroupVersionKind]string{}, expanded: map[string]*spec.Schema{}}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var doc spec3.OpenAPI
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if doc.Components == nil {
			continue
		}
		// Every document repeats the shared definitions (ObjectMeta, …);
		// the copies are the same.
		for name, sch := range doc.Components.Schemas {
			s.schemas[name] = sch
		}
	}
	for name, sch := range s.schemas {
		for _, gvk := range gvks(sch) {
			s.byGVK[gvk] = name
		}
	}
	s.types, err = managedfields.NewTypeConverter(s.schemas, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return s, nil
}

// gvks reads a definition's x-kubernetes-group-version-kind.
func gvks(sch *spec.Schema) []schema.GroupVersionKind {
	raw, ok := sch.Extensions["x-kubernetes-group-version-kind"]
	if !ok {
		return nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil
	}
	var list []schema.GroupVersionKind
	if json.Unmarshal(b, &list) != nil {
		return nil
	}
	return list
}

// Validate checks obj against the schema of its apiVersion and kind; the
// error lists every violation found.
func (s *Schema) Validate(obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	name, ok := s.byGVK[gvk]
	if !ok {
		return fmt.Errorf("%s: no such kind in the Kubernetes API", gvk)
	}
	var errs []error
	if _, err := s.types.ObjectToTyped(obj); err != nil {
		errs = append(errs, err)
	}
	s.mu.Lock()
	top, ok := s.expanded[name]
	if !ok {
		top = s.expand(name, nil)
		s.expanded[name] = top
	}
	s.mu.Unlock()
	v := validate.NewSchemaValidator(top, nil, "", strfmt.Default)
	errs = append(errs, v.Validate(obj.Object).Errors...)
	return errors.Join(errs...)
}

const refPrefix = "#/components/schemas/"

// expand returns the schema called name with every $ref inlined, as
// kube-openapi's validator needs. A type that contains itself (JSONSchemaProps)
// is left unconstrained below its first occurrence; the structural check
// still covers it.
func (s *Schema) expand(name string, visiting []string) *spec.Schema {
	for _, v := range visiting {
		if v == name {
			return &spec.Schema{}
		}
	}
	src, ok := s.schemas[name]
	if !ok {
		return &spec.Schema{}
	}
	return s.inline(*src, append(visiting, name))
}

// inline copies sch with its $refs (and theirs) replaced by the schemas
// they name.
func (s *Schema) inline(sch spec.Schema, visiting []string) *spec.Schema {
	if ref := sch.Ref.String(); ref != "" {
		target := s.expand(strings.TrimPrefix(ref, refPrefix), visiting)
		// A $ref beside other keywords (description) means the target.
		return target
	}
	// Descriptions and extensions weigh a lot and constrain nothing.
	sch.Description = ""
	sch.Extensions = nil
	// IntOrString's format restates its oneOf (integer or string); the
	// validator, not knowing it, would want a string of that format.
	if sch.Format == "int-or-string" {
		sch.Format = ""
	}
	if len(sch.Properties) > 0 {
		props := make(map[string]spec.Schema, len(sch.Properties))
		for k, p := range sch.Properties {
			props[k] = *s.inline(p, visiting)
		}
		sch.Properties = props
	}
	if sch.AdditionalProperties != nil && sch.AdditionalProperties.Schema != nil {
		ap := *sch.AdditionalProperties
		ap.Schema = s.inline(*ap.Schema, visiting)
		sch.AdditionalProperties = &ap
	}
	if sch.Items != nil {
		items := *sch.Items
		if items.Schema != nil {
			items.Schema = s.inline(*items.Schema, visiting)
		}
		if len(items.Schemas) > 0 {
			list := make([]spec.Schema, len(items.Schemas))
			for i, it := range items.Schemas {
				list[i] = *s.inline(it, visiting)
			}
			items.Schemas = list
		}
		sch.Items = &items
	}
	sch.AllOf = s.inlineAll(sch.AllOf, visiting)
	sch.AnyOf = s.inlineAll(sch.AnyOf, visiting)
	sch.OneOf = s.inlineAll(sch.OneOf, visiting)
	return &sch
}

func (s *Schema) inlineAll(list []spec.Schema, visiting []string) []spec.Schema {
	if len(list) == 0 {
		return list
	}
	out := make([]spec.Schema, len(list))
	for i, it := range list {
		out[i] = *s.inline(it, visiting)
	}
	return out
}
