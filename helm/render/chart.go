package main

// Loading a chart directory, values files, coalescing and schema validation: Helm's
// pkg/chart/loader and pkg/chartutil, for a chart without dependencies.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/Masterminds/semver/v3"
	"github.com/ghodss/yaml"
	"github.com/xeipuuv/gojsonschema"
)

// Metadata is Chart.yaml, with the field names templates use (.Chart.Name, .Chart.AppVersion).
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Chart is a loaded chart directory.
type Chart struct {
	Metadata *Metadata
	Values   map[string]interface{}
	Schema   []byte
	// Templates by name ("<chart>/templates/<path>"), as Helm names them.
	Templates map[string]string
}

var chartName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func loadChart(dir string) (*Chart, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, fmt.Errorf("Chart.yaml file is missing: %w", err)
	}
	md := &Metadata{}
	if err := yaml.Unmarshal(raw, md); err != nil {
		return nil, fmt.Errorf("cannot load Chart.yaml: %w", err)
	}
	// pkg/chart.Metadata.Validate
	switch {
	case md.APIVersion == "":
		return nil, errors.New("validation: chart.metadata.apiVersion is required")
	case md.APIVersion != "v2":
		return nil, fmt.Errorf("validation: chart.metadata.apiVersion %q: this renderer reads v2 charts only", md.APIVersion)
	case md.Name == "":
		return nil, errors.New("validation: chart.metadata.name is required")
	case !chartName.MatchString(md.Name):
		return nil, fmt.Errorf("validation: chart.metadata.name %q is invalid", md.Name)
	case md.Version == "":
		return nil, errors.New("validation: chart.metadata.version is required")
	case md.Type != "" && md.Type != "application":
		return nil, fmt.Errorf("validation: chart.metadata.type %q: only application charts render", md.Type)
	case len(md.Dependencies) != 0:
		return nil, errors.New("chart dependencies are not supported by this renderer")
	}
	if _, err := semver.StrictNewVersion(md.Version); err != nil {
		return nil, fmt.Errorf("validation: chart.metadata.version %q is invalid", md.Version)
	}
	if md.KubeVersion != "" {
		if _, err := semver.NewConstraint(md.KubeVersion); err != nil {
			return nil, fmt.Errorf("validation: kubeVersion %q is invalid", md.KubeVersion)
		}
	}
	ch := &Chart{Metadata: md, Values: map[string]interface{}{}, Templates: map[string]string{}}
	if raw, err := os.ReadFile(filepath.Join(dir, "values.yaml")); err == nil {
		if ch.Values, err = readValues(raw); err != nil {
			return nil, fmt.Errorf("cannot load values.yaml: %w", err)
		}
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "values.schema.json")); err == nil {
		ch.Schema = raw
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	tdir := filepath.Join(dir, "templates")
	err = filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		ch.Templates[path.Join(md.Name, filepath.ToSlash(rel))] = string(data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ch, nil
}

// readValues is chartutil.ReadValues: sigs.k8s.io/yaml (here ghodss/yaml, its origin), so YAML
// 1.1 scalars and float64 numbers, exactly as Helm sees them.
func readValues(data []byte) (map[string]interface{}, error) {
	vals := map[string]interface{}{}
	err := yaml.Unmarshal(data, &vals)
	if len(vals) == 0 {
		vals = map[string]interface{}{}
	}
	return vals, err
}

func readValuesFile(name string) (map[string]interface{}, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	v, err := readValues(data)
	if err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", name, err)
	}
	return v, nil
}

// mergeMaps is how Helm merges several -f files: b wins, maps merge recursively.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if v, ok := v.(map[string]interface{}); ok {
			if bv, ok := out[k]; ok {
				if bv, ok := bv.(map[string]interface{}); ok {
					out[k] = mergeMaps(bv, v)
					continue
				}
			}
		}
		out[k] = v
	}
	return out
}

// coalesceValues is chartutil.CoalesceValues for a chart without dependencies: user values
// win, tables merge, and a user null deletes the chart's default.
func coalesceValues(defaults, user map[string]interface{}) (map[string]interface{}, error) {
	dst, err := deepCopy(user)
	if err != nil {
		return nil, err
	}
	src, err := deepCopy(defaults)
	if err != nil {
		return nil, err
	}
	for key, val := range src {
		if value, ok := dst[key]; ok {
			if value == nil {
				delete(dst, key)
			} else if d, ok := value.(map[string]interface{}); ok {
				if s, ok := val.(map[string]interface{}); ok {
					coalesceTables(d, s, key)
				} else if val != nil {
					warn("warning: skipped value for %s: Not a table.", key)
				}
			}
		} else {
			dst[key] = val
		}
	}
	return dst, nil
}

func coalesceTables(dst, src map[string]interface{}, prefix string) {
	for key, val := range src {
		full := prefix + "." + key
		dv, ok := dst[key]
		switch {
		case ok && dv == nil:
			delete(dst, key)
		case !ok:
			dst[key] = val
		case isTable(val):
			if isTable(dv) {
				coalesceTables(dv.(map[string]interface{}), val.(map[string]interface{}), full)
			} else {
				warn("warning: cannot overwrite table with non table for %s (%v)", full, val)
			}
		case isTable(dv) && val != nil:
			warn("warning: destination for %s is a table. Ignoring non-table value (%v)", full, val)
		}
	}
}

func isTable(v interface{}) bool {
	_, ok := v.(map[string]interface{})
	return ok
}

func warn(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// deepCopy of values (Helm uses copystructure): they hold only what JSON holds.
func deepCopy(v map[string]interface{}) (map[string]interface{}, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	return out, json.Unmarshal(data, &out)
}

// validateAgainstSchema is chartutil.ValidateAgainstSchema / ValidateAgainstSingleSchema.
func validateAgainstSchema(ch *Chart, values map[string]interface{}) error {
	if ch.Schema == nil {
		return nil
	}
	valuesData, err := yaml.Marshal(values)
	if err != nil {
		return err
	}
	valuesJSON, err := yaml.YAMLToJSON(valuesData)
	if err != nil {
		return err
	}
	if bytes.Equal(valuesJSON, []byte("null")) {
		valuesJSON = []byte("{}")
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(ch.Schema), gojsonschema.NewBytesLoader(valuesJSON))
	if err != nil {
		return err
	}
	if result.Valid() {
		return nil
	}
	var sb strings.Builder
	sb.WriteString(ch.Metadata.Name + ":\n")
	msgs := make([]string, 0, len(result.Errors()))
	for _, desc := range result.Errors() {
		msgs = append(msgs, fmt.Sprintf("- %s\n", desc))
	}
	sort.Strings(msgs)
	for _, m := range msgs {
		sb.WriteString(m)
	}
	return errors.New(sb.String())
}

// === capabilities ===

// KubeVersion is chartutil.KubeVersion.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

// String is the version, e.g. v1.30.0.
func (kv *KubeVersion) String() string { return kv.Version }

// GitVersion is the version, as Helm reports it.
func (kv *KubeVersion) GitVersion() string { return kv.Version }

// VersionSet is chartutil.VersionSet.
type VersionSet []string

// Has reports whether an API version (e.g. "policy/v1") is known.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// Capabilities is chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion map[string]string
}

// The built-in API groups of a current cluster (no CRDs), as `helm template` assumes.
var defaultAPIVersions = VersionSet{
	"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "coordination.k8s.io/v1",
	"discovery.k8s.io/v1", "scheduling.k8s.io/v1", "node.k8s.io/v1",
}

func newCapabilities(version string) (*Capabilities, error) {
	v, err := semver.NewVersion(version)
	if err != nil {
		return nil, fmt.Errorf("invalid kube version %q: %w", version, err)
	}
	return &Capabilities{
		KubeVersion: KubeVersion{
			Version: "v" + v.String(),
			Major:   fmt.Sprint(v.Major()),
			Minor:   fmt.Sprint(v.Minor()),
		},
		APIVersions: defaultAPIVersions,
		HelmVersion: map[string]string{"Version": "v3-compatible (helm/render)"},
	}, nil
}

func checkKubeVersion(md *Metadata, caps *Capabilities) error {
	if md.KubeVersion == "" {
		return nil
	}
	c, err := semver.NewConstraint(md.KubeVersion)
	if err != nil {
		return err
	}
	v, err := semver.NewVersion(caps.KubeVersion.Version)
	if err != nil {
		return err
	}
	if !c.Check(v) {
		return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", md.KubeVersion, caps.KubeVersion.Version)
	}
	return nil
}

// files stands in for .Files; the vigil chart reads none.
type files map[string][]byte

// Get returns a file's content ("" when absent), like Helm's Files.Get.
func (f files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's content, like Helm's Files.GetBytes.
func (f files) GetBytes(name string) []byte { return f[name] }
