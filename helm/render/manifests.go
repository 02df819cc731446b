package main

// From rendered files to manifests: Helm's pkg/releaseutil (SplitManifests, SortManifests,
// InstallOrder), plus the checks the API server would make first.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/ghodss/yaml"
	yaml3 "gopkg.in/yaml.v3"
)

// installOrder is releaseutil.InstallOrder.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

// simpleHead is releaseutil.SimpleHead: what Helm itself decodes of every manifest.
type simpleHead struct {
	Version  string `json:"apiVersion"`
	Kind     string `json:"kind,omitempty"`
	Metadata *struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata,omitempty"`
}

type manifest struct {
	Source  string
	Content string
	Head    simpleHead
	Object  map[string]interface{}
}

type rendered struct {
	Values    map[string]interface{}
	Notes     string
	Manifests []manifest
}

var sep = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// splitManifests is releaseutil.SplitManifests: documents in order, empty ones dropped.
func splitManifests(bigFile string) []string {
	var out []string
	for _, d := range sep.Split(bigFile, -1) {
		if strings.TrimSpace(d) == "" {
			continue
		}
		out = append(out, strings.TrimSpace(d))
	}
	return out
}

var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
var dnsLabel = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

func splitAndSort(files map[string]string, values map[string]interface{}) (*rendered, error) {
	r := &rendered{Values: values}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		content := files[name]
		if strings.HasSuffix(name, "NOTES.txt") {
			r.Notes = content
			continue
		}
		for _, doc := range splitManifests(content) {
			m := manifest{Source: name, Content: doc}
			if err := yaml.Unmarshal([]byte(doc), &m.Head); err != nil {
				return nil, fmt.Errorf("YAML parse error on %s: %w", name, err)
			}
			// Stricter than Helm from here: what the API server or kubectl would refuse.
			var strict interface{}
			if err := yaml3.Unmarshal([]byte(doc), &strict); err != nil {
				return nil, fmt.Errorf("YAML error on %s (duplicate key?): %w", name, err)
			}
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				return nil, fmt.Errorf("converting %s to JSON: %w", name, err)
			}
			if err := json.Unmarshal(j, &m.Object); err != nil || m.Object == nil {
				return nil, fmt.Errorf("%s: a manifest must be a YAML mapping", name)
			}
			if err := stringMaps(m.Object, ""); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if m.Head.Version == "" || m.Head.Kind == "" {
				return nil, fmt.Errorf("%s: apiVersion not set or kind not set", name)
			}
			if m.Head.Metadata == nil || m.Head.Metadata.Name == "" {
				return nil, fmt.Errorf("%s: %s has no metadata.name", name, m.Head.Kind)
			}
			n := m.Head.Metadata.Name
			if len(n) > 253 || !dnsSubdomain.MatchString(n) {
				return nil, fmt.Errorf("%s: %s name %q is not a DNS-1123 subdomain", name, m.Head.Kind, n)
			}
			if m.Head.Kind == "Service" && (len(n) > 63 || !dnsLabel.MatchString(n)) {
				return nil, fmt.Errorf("%s: Service name %q is not a DNS-1035 label", name, n)
			}
			r.Manifests = append(r.Manifests, m)
		}
	}
	order := make(map[string]int, len(installOrder))
	for i, k := range installOrder {
		order[k] = i
	}
	sort.SliceStable(r.Manifests, func(i, j int) bool {
		a, b := r.Manifests[i].Head.Kind, r.Manifests[j].Head.Kind
		oa, aok := order[a]
		ob, bok := order[b]
		switch {
		case !aok && !bok:
			return a < b
		case !aok:
			return false
		case !bok:
			return true
		}
		return oa < ob
	})
	return r, nil
}

// Maps whose values the API server takes as strings only (an unquoted `true` or `8080` there
// passes Helm, whose YAML decoder turns it into a string for its own head struct, and is
// refused at install).
var stringMapKeys = map[string]bool{"labels": true, "annotations": true, "matchLabels": true, "nodeSelector": true}

func stringMaps(v interface{}, at string) error {
	switch x := v.(type) {
	case map[string]interface{}:
		for k, child := range x {
			path := at + "." + k
			if m, ok := child.(map[string]interface{}); ok && stringMapKeys[k] {
				for lk, lv := range m {
					if _, ok := lv.(string); !ok {
						return fmt.Errorf("%s.%s: %v is not a string (quote it)", path, lk, lv)
					}
				}
			}
			if err := stringMaps(child, path); err != nil {
				return err
			}
		}
	case []interface{}:
		for i, child := range x {
			if err := stringMaps(child, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *rendered) yamlStream() string {
	var b strings.Builder
	for _, m := range r.Manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Source, m.Content)
	}
	return b.String()
}

func (r *rendered) jsonDoc() interface{} {
	type entry struct {
		Source string                 `json:"source"`
		Object map[string]interface{} `json:"object"`
	}
	ms := make([]entry, 0, len(r.Manifests))
	for _, m := range r.Manifests {
		ms = append(ms, entry{m.Source, m.Object})
	}
	return map[string]interface{}{"values": r.Values, "notes": r.Notes, "manifests": ms}
}
