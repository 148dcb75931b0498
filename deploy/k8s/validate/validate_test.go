package validate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

const manifestsDir = ".." // deploy/k8s

func TestManifestsDecodeStrictlyAndPassChecks(t *testing.T) {
	ms, err := LoadDir(manifestsDir)
	if err != nil {
		t.Fatalf("decoding %s: %v", manifestsDir, err)
	}
	seen := map[string]int{}
	for _, m := range ms {
		seen[m.Kind]++
	}
	if seen["apps/v1/Deployment"] != 1 || seen["v1/Service"] != 1 {
		t.Fatalf("want one Deployment and one Service, got %v", seen)
	}
	for _, err := range CheckAll(ms) {
		t.Error(err)
	}
	// The router as the checks see it: a native sidecar on 50051 with gRPC probes.
	for _, m := range ms {
		if d, ok := m.Object.(*appsv1.Deployment); ok {
			c, err := findRouter(&d.Spec.Template.Spec)
			if err != nil {
				t.Fatal(err)
			}
			if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("router is not a native sidecar")
			}
			if c.ReadinessProbe.GRPC.Port != DefaultPort {
				t.Errorf("readiness port %d", c.ReadinessProbe.GRPC.Port)
			}
		}
	}
}

// Each case breaks a copy of the manifests in one way; loading + checking it must fail naming the problem.
func TestBrokenManifestsFail(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "deployment.yaml",
			"      automountServiceAccountToken: false\n",
			"      automountServiceAccountToken: false\n      automountServiceAcountToken: false\n",
			`json: unknown field "automountServiceAcountToken"`},
		{"unknown field in a probe", "deployment.yaml",
			"            periodSeconds: 5\n", "            periodSeconds: 5\n            periodSecond: 5\n",
			`unknown field`},
		{"duplicate key", "deployment.yaml", "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", `"replicas" already set`},
		{"unknown kind", "service.yaml", "kind: Service\n", "kind: Servce\n", `unsupported apiVersion/kind "v1/Servce"`},
		{"readiness on the wrong port", "deployment.yaml",
			"          readinessProbe:          # SERVING only while the bundle is loaded and not draining\n            grpc:\n              port: 50051\n",
			"          readinessProbe:          # SERVING only while the bundle is loaded and not draining\n            grpc:\n              port: 50052\n",
			"readinessProbe dials port 50052, but the router listens on 50051"},
		{"router moved to another port", "deployment.yaml",
			"            - name: LMROUTE_PORT\n              value: \"50051\"\n", "            - name: LMROUTE_PORT\n              value: \"8081\"\n",
			"no containerPort 8081"},
		{"readiness not gRPC", "deployment.yaml",
			"          readinessProbe:          # SERVING only while the bundle is loaded and not draining\n            grpc:\n              port: 50051\n              service: lmroute.v1.RouterService\n",
			"          readinessProbe:\n            tcpSocket:\n              port: 50051\n",
			"readinessProbe is not a grpc probe"},
		{"readiness without the health service", "deployment.yaml",
			"            grpc:\n              port: 50051\n              service: lmroute.v1.RouterService\n            periodSeconds: 5\n",
			"            grpc:\n              port: 50051\n            periodSeconds: 5\n",
			`readinessProbe must ask the health service for "lmroute.v1.RouterService"`},
		{"bundle mounted read-write", "deployment.yaml",
			"              mountPath: /bundle\n              readOnly: true\n", "              mountPath: /bundle\n",
			"must be mounted readOnly"},
		{"root allowed", "deployment.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot must be true"},
		{"writable root filesystem", "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"},
		{"capabilities kept", "deployment.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "capabilities must drop ALL"},
		{"privilege escalation", "deployment.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation must be false"},
		{"no router limits", "deployment.yaml",
			"            limits:\n              cpu: \"2\"\n              memory: 1Gi\n", "",
			`container "lmroute": resources.requests and resources.limits must both set cpu`},
		{"router on loopback only", "deployment.yaml", "              value: 0.0.0.0\n", "              value: 127.0.0.1\n", `LMROUTE_HOST="127.0.0.1"`},
		{"router exposed by the Service", "service.yaml", "      targetPort: http\n", "      targetPort: 50051\n", "exposes the router's port"},
		{"policy admits the router's port", "networkpolicy.yaml", "        - port: 8080\n", "        - port: 50051\n", "admits the router's port 50051"},
		{"policy admits every port", "networkpolicy.yaml", "    - ports:\n        - port: 8080\n          protocol: TCP\n", "    - {}\n", "names no port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyManifests(t)
			p := filepath.Join(dir, tc.file)
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), tc.old) {
				t.Fatalf("%s no longer contains %q: update this case", tc.file, tc.old)
			}
			if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), tc.old, tc.new)), 0o644); err != nil {
				t.Fatal(err)
			}
			err = loadAndCheck(dir)
			if err == nil {
				t.Fatalf("a broken copy (%s) passed", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got:\n%v", tc.want, err)
			}
		})
	}
}

func TestCopyOfManifestsPasses(t *testing.T) { // the harness itself: an unmodified copy passes
	if err := loadAndCheck(copyManifests(t)); err != nil {
		t.Fatal(err)
	}
}

func loadAndCheck(dir string) error { return loadAndCheckWith(dir, CheckAll) }

// loadAndCheckWith decodes the manifests of dir and runs check over them: every error, joined.
func loadAndCheckWith(dir string, check func([]Manifest) []error) error {
	ms, err := LoadDir(dir)
	if err != nil {
		return err
	}
	return errors.Join(check(ms)...)
}

func copyManifests(t *testing.T) string {
	t.Helper()
	return copyDir(t, manifestsDir)
}
