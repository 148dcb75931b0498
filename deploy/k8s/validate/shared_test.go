package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sharedDir = "../shared" // deploy/k8s/shared

func TestSharedManifestsDecodeStrictlyAndPassChecks(t *testing.T) {
	ms, err := LoadDir(sharedDir)
	if err != nil {
		t.Fatalf("decoding %s: %v", sharedDir, err)
	}
	seen := map[string]int{}
	for _, m := range ms {
		seen[m.Kind]++
	}
	for _, kind := range []string{"apps/v1/Deployment", "v1/Service", "networking.k8s.io/v1/NetworkPolicy",
		"autoscaling/v2/HorizontalPodAutoscaler", "policy/v1/PodDisruptionBudget"} {
		if seen[kind] != 1 {
			t.Errorf("want one %s, got %v", kind, seen)
		}
	}
	for _, err := range CheckShared(ms) {
		t.Error(err)
	}
}

// Each case breaks a copy of the shared manifests in one way; checking it must fail naming the problem.
func TestBrokenSharedManifestsFail(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"no TLS", "deployment.yaml",
			"            - name: LMROUTE_TLS_CERT_FILE\n              value: /etc/lmroute/tls/tls.crt\n", "",
			"LMROUTE_TLS_CERT_FILE is not set"},
		{"no tokens", "deployment.yaml",
			"            - name: LMROUTE_AUTH_TOKENS_FILE\n              value: /etc/lmroute/auth/tokens\n", "",
			"LMROUTE_AUTH_TOKENS_FILE is not set"},
		{"tokens outside a Secret", "deployment.yaml",
			"              value: /etc/lmroute/auth/tokens\n", "              value: /tmp/tokens\n",
			"LMROUTE_AUTH_TOKENS_FILE=/tmp/tokens is not inside a read-only mount of a Secret volume"},
		{"probe without TLS", "deployment.yaml",
			"          readinessProbe:\n            exec:\n              command: [\"grpc-health-probe\", \"-addr=127.0.0.1:50051\", \"-tls\",",
			"          readinessProbe:\n            exec:\n              command: [\"grpc-health-probe\", \"-addr=127.0.0.1:50051\",",
			"readinessProbe must pass -tls"},
		{"kubelet gRPC probe", "deployment.yaml",
			"          livenessProbe:\n            exec:\n              command: [\"grpc-health-probe\", \"-addr=127.0.0.1:50051\", \"-tls\", \"-tls-ca-cert=/etc/lmroute/tls/ca.crt\",\n                        \"-tls-server-name=lmroute\"]\n",
			"          livenessProbe:\n            grpc:\n              port: 50051\n",
			"livenessProbe must run grpc-health-probe"},
		{"policy open to all", "networkpolicy.yaml",
			"    - from:\n        - podSelector:\n            matchLabels:\n              lmroute-client: \"true\"\n      ports:\n",
			"    - ports:\n",
			"ingress[0] has no `from`"},
		{"policy without ports", "networkpolicy.yaml",
			"      ports:\n        - port: 50051\n          protocol: TCP\n", "",
			"ingress[0] names no port"},
		{"HPA on another Deployment", "hpa.yaml", "    name: lmroute\n", "    name: my-app\n",
			"scaleTargetRef is Deployment \"my-app\""},
		{"one replica minimum", "hpa.yaml", "  minReplicas: 2\n", "  minReplicas: 1\n", "minReplicas must be >= 2"},
		{"PDB over other pods", "pdb.yaml", "      app.kubernetes.io/name: lmroute\n", "      app.kubernetes.io/name: other\n",
			"selector does not select the router's pods"},
		{"router on loopback", "deployment.yaml", "              value: 0.0.0.0\n", "              value: 127.0.0.1\n",
			`LMROUTE_HOST="127.0.0.1"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, sharedDir)
			p := filepath.Join(dir, tc.file)
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), tc.old) {
				t.Fatalf("%s no longer contains %q: update this case", tc.file, tc.old)
			}
			if err := os.WriteFile(p, []byte(strings.Replace(string(data), tc.old, tc.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			err = loadAndCheckShared(dir)
			if err == nil {
				t.Fatalf("a broken copy (%s) passed", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got:\n%v", tc.want, err)
			}
		})
	}
	t.Run("no NetworkPolicy", func(t *testing.T) {
		dir := copyDir(t, sharedDir)
		if err := os.Remove(filepath.Join(dir, "networkpolicy.yaml")); err != nil {
			t.Fatal(err)
		}
		if err := loadAndCheckShared(dir); err == nil || !strings.Contains(err.Error(), "no NetworkPolicy") {
			t.Fatalf("want a missing NetworkPolicy refused, got %v", err)
		}
	})
}

func TestCopyOfSharedManifestsPasses(t *testing.T) {
	if err := loadAndCheckShared(copyDir(t, sharedDir)); err != nil {
		t.Fatal(err)
	}
}

func loadAndCheckShared(dir string) error { return loadAndCheckWith(dir, CheckShared) }

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s (%v)", src, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
