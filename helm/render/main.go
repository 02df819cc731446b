// Command render renders a Helm chart the way `helm template` does, for machines without Helm.
//
// It is Helm 3's rendering path, rebuilt from the same parts: Go's text/template with the sprig
// v3 function library (minus env and expandenv, as in Helm) and Helm's own functions (include,
// tpl, required, fail, toYaml, fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray,
// toToml, lookup); values read with ghodss/yaml (the library sigs.k8s.io/yaml was forked from:
// YAML 1.1, every number a float64); user values merged and coalesced with the chart's
// values.yaml by Helm's rules (a user null deletes a key); the result validated against
// values.schema.json with xeipuuv/gojsonschema, the validator Helm 3 uses; the chart's
// kubeVersion checked with Masterminds/semver; templates parsed in Helm's order, partials
// (files starting with "_") not rendered, "<no value>" removed, NOTES.txt rendered apart;
// manifests split on "---", empty ones dropped, each parsed into Helm's head struct and sorted
// in Helm's install order.
//
// Beyond `helm template`, what the API server would refuse at install: each manifest must name
// apiVersion, kind and a DNS-1123 metadata.name (a DNS-1035 label for a Service), may not
// repeat a mapping key (decoded once more with yaml.v3, which refuses duplicates where YAML 1.1
// decoding keeps the last), and labels, annotations, matchLabels and nodeSelector hold strings
// only.
//
// Not implemented: chart dependencies and subcharts, .Files.Glob / AsConfig / AsSecrets (the
// vigil chart uses no Files), --set flags, hooks (the vigil chart has none), `lookup` against a
// cluster (like `helm template`, it returns an empty map), and validation against the
// cluster's OpenAPI schema.
//
// Usage:
//
//	render -chart DIR [-f values.yaml]... [-name RELEASE] [-namespace NS]
//	       [-kube-version v1.30.0] [-json OUT.json]
//
// The manifests go to stdout as `helm template` prints them; -json also writes
// {"values": ..., "notes": "...", "manifests": [{"source": ..., "object": ...}]}, each object
// converted from YAML to JSON with ghodss/yaml as kubectl and Helm's client do. Errors go to
// stderr as "Error: ..." with exit status 1.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var valueFiles fileList
	chartDir := flag.String("chart", "", "chart directory")
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	release := flag.String("name", "vigil", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities and the chart's kubeVersion")
	jsonOut := flag.String("json", "", "also write the values, notes and manifests as JSON to this file")
	flag.Parse()
	if *chartDir == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: render -chart DIR [-f values.yaml]... [-name RELEASE] [-namespace NS] [-kube-version V] [-json OUT]")
		os.Exit(2)
	}
	result, err := run(*chartDir, valueFiles, *release, *namespace, *kubeVersion)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err)
		os.Exit(1)
	}
	fmt.Print(result.yamlStream())
	if *jsonOut != "" {
		data, err := json.MarshalIndent(result.jsonDoc(), "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonOut, data, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: writing %s: %s\n", *jsonOut, err)
			os.Exit(1)
		}
	}
}

// run loads the chart and values, validates them and renders every template.
func run(chartDir string, valueFiles []string, release, namespace, kubeVersion string) (*rendered, error) {
	ch, err := loadChart(chartDir)
	if err != nil {
		return nil, err
	}
	caps, err := newCapabilities(kubeVersion)
	if err != nil {
		return nil, err
	}
	if err := checkKubeVersion(ch.Metadata, caps); err != nil {
		return nil, err
	}
	user := map[string]interface{}{}
	for _, f := range valueFiles {
		v, err := readValuesFile(f)
		if err != nil {
			return nil, err
		}
		user = mergeMaps(user, v)
	}
	values, err := coalesceValues(ch.Values, user)
	if err != nil {
		return nil, err
	}
	if err := validateAgainstSchema(ch, values); err != nil {
		return nil, fmt.Errorf("values don't meet the specifications of the schema(s) in the following chart(s):\n%s", err)
	}
	top := map[string]interface{}{
		"Chart":        ch.Metadata,
		"Capabilities": caps,
		"Release": map[string]interface{}{
			"Name":      release,
			"Namespace": namespace,
			"IsUpgrade": false,
			"IsInstall": true,
			"Revision":  1,
			"Service":   "Helm",
		},
		"Values":    values,
		"Files":     files{},
		"Subcharts": map[string]interface{}{},
	}
	out, err := renderTemplates(ch, top)
	if err != nil {
		return nil, err
	}
	return splitAndSort(out, values)
}
