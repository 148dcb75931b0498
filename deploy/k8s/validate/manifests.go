// Package validate checks the Kubernetes manifests of deploy/k8s offline: every document is decoded
// strictly (unknown or duplicate fields are errors) into its typed API object; the router sidecar's
// Deployment (deploy/k8s) is checked against the rules in checks.go, the shared router service
// (deploy/k8s/shared) against those in shared.go.
package validate

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Manifest is one decoded YAML document: where it came from and the typed object.
type Manifest struct {
	File   string // base name of the file
	Index  int    // 0-based document index within the file
	Kind   string // apiVersion + "/" + kind, e.g. "apps/v1/Deployment"
	Object any    // *appsv1.Deployment, *corev1.Service
}

// Where names a document in error messages: "deployment.yaml#0 (apps/v1/Deployment my-app)".
func (m Manifest) Where() string {
	name := ""
	if o, ok := m.Object.(metav1.Object); ok {
		name = " " + o.GetName()
	}
	return fmt.Sprintf("%s#%d (%s%s)", m.File, m.Index, m.Kind, name)
}

// The kinds the manifests may hold, each decoded into its own typed object.
var kinds = map[string]func() any{
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return &networkingv1.NetworkPolicy{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
}

// LoadDir decodes every *.yaml file directly inside dir (documents separated by "---" lines).
func LoadDir(dir string) ([]Manifest, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.yaml manifests in %s", dir)
	}
	sort.Strings(files)
	var out []Manifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ms, err := decodeFile(filepath.Base(f), data)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

func decodeFile(name string, data []byte) ([]Manifest, error) {
	var out []Manifest
	for i, doc := range splitDocuments(data) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s#%d: not YAML: %w", name, i, err)
		}
		kind := tm.APIVersion + "/" + tm.Kind
		newObj, ok := kinds[kind]
		if !ok {
			return nil, fmt.Errorf("%s#%d: unsupported apiVersion/kind %q (known: %s)", name, i, kind, knownKinds())
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s#%d (%s): %w", name, i, kind, err)
		}
		out = append(out, Manifest{File: name, Index: i, Kind: kind, Object: obj})
	}
	return out, nil
}

// splitDocuments returns the non-empty documents of a multi-document YAML file.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	for _, part := range bytes.Split(append([]byte("\n"), data...), []byte("\n---")) {
		if hasContent(part) {
			docs = append(docs, part)
		}
	}
	return docs
}

func hasContent(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

func knownKinds() string {
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
