package validate

import (
	"fmt"
	"path"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// What the router image does unless its environment says otherwise (Dockerfile, `lmroute-serve --help`).
const (
	RouterContainer = "lmroute"                  // name of the router sidecar container
	RouterService   = "lmroute.v1.RouterService" // grpc.health.v1 service that is SERVING once the bundle is warm
	DefaultPort     = 50051                      // LMROUTE_PORT
	DefaultBundle   = "/opt/lmroute/bundle"      // LMROUTE_BUNDLE in the image
)

// CheckAll checks every manifest: at least one Deployment with the router, each passing CheckDeployment,
// and no Service exposing the router's port.
func CheckAll(ms []Manifest) []error {
	var errs []error
	routerPorts := map[int32]bool{}
	deployments := 0
	for _, m := range ms {
		d, ok := m.Object.(*appsv1.Deployment)
		if !ok {
			continue
		}
		deployments++
		for _, err := range CheckDeployment(d) {
			errs = append(errs, fmt.Errorf("%s: %w", m.Where(), err))
		}
		if c, _ := findRouter(&d.Spec.Template.Spec); c != nil {
			if p, err := routerPort(c); err == nil {
				routerPorts[p] = true
			}
		}
	}
	if deployments == 0 {
		errs = append(errs, fmt.Errorf("no apps/v1 Deployment among the manifests"))
	}
	errs = append(errs, checkSidecarPolicies(ms, routerPorts)...)
	for _, m := range ms {
		s, ok := m.Object.(*corev1.Service)
		if !ok {
			continue
		}
		for _, p := range s.Spec.Ports {
			if routerPorts[p.Port] || (p.TargetPort.IntValue() != 0 && routerPorts[int32(p.TargetPort.IntValue())]) {
				errs = append(errs, fmt.Errorf("%s: port %q exposes the router's port; only the pod's own containers may use it", m.Where(), p.Name))
			}
		}
	}
	return errs
}

// CheckDeployment checks the pod template of a Deployment that carries the router sidecar.
func CheckDeployment(d *appsv1.Deployment) []error {
	spec := &d.Spec.Template.Spec
	router, err := findRouter(spec)
	if err != nil {
		return []error{err}
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	port, err := routerPort(router)
	if err != nil {
		add("container %q: %v", router.Name, err)
	}
	if !hasContainerPort(router, port) {
		add("container %q: no containerPort %d, the port the router listens on (LMROUTE_PORT)", router.Name, port)
	}
	if host, ok := envValue(router, "LMROUTE_HOST"); ok && host != "0.0.0.0" && host != "::" {
		add("container %q: LMROUTE_HOST=%q, but the kubelet's gRPC probes dial the pod IP: use 0.0.0.0", router.Name, host)
	}
	errs = append(errs, checkProbes(router, port)...)
	errs = append(errs, checkBundleMount(spec, router)...)
	errs = append(errs, checkTmp(spec, router)...)
	errs = append(errs, checkAppTalksToRouter(spec, port)...)
	for _, c := range allContainers(spec) {
		errs = append(errs, checkSecurity(spec.SecurityContext, c)...)
		errs = append(errs, checkResources(c)...)
	}
	return errs
}

// findRouter returns the router container: a regular container, or a native sidecar (an init container
// with restartPolicy Always; a plain init container would block the pod's start forever).
func findRouter(spec *corev1.PodSpec) (*corev1.Container, error) {
	for i := range spec.Containers {
		if spec.Containers[i].Name == RouterContainer {
			return &spec.Containers[i], nil
		}
	}
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		if c.Name != RouterContainer {
			continue
		}
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			return nil, fmt.Errorf("init container %q: a router among initContainers needs restartPolicy: Always (native sidecar)", c.Name)
		}
		return c, nil
	}
	return nil, fmt.Errorf("no container named %q (the router) in the pod template", RouterContainer)
}

func routerPort(c *corev1.Container) (int32, error) {
	v, ok := envValue(c, "LMROUTE_PORT")
	if !ok {
		return DefaultPort, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return DefaultPort, fmt.Errorf("LMROUTE_PORT=%q is not a TCP port", v)
	}
	return int32(p), nil
}

func checkProbes(c *corev1.Container, port int32) []error {
	var errs []error
	probes := []struct {
		name    string
		probe   *corev1.Probe
		must    bool
		service string // required grpc.service; "" = any
	}{
		{"startupProbe", c.StartupProbe, false, RouterService},
		{"readinessProbe", c.ReadinessProbe, true, RouterService},
		{"livenessProbe", c.LivenessProbe, true, ""},
	}
	for _, p := range probes {
		if p.probe == nil {
			if p.must {
				errs = append(errs, fmt.Errorf("container %q: no %s", c.Name, p.name))
			}
			continue
		}
		g := p.probe.GRPC
		if g == nil {
			errs = append(errs, fmt.Errorf("container %q: %s is not a grpc probe", c.Name, p.name))
			continue
		}
		if g.Port != port {
			errs = append(errs, fmt.Errorf("container %q: %s dials port %d, but the router listens on %d", c.Name, p.name, g.Port, port))
		}
		if p.service != "" && (g.Service == nil || *g.Service != p.service) {
			errs = append(errs, fmt.Errorf("container %q: %s must ask the health service for %q (SERVING once the bundle is warm)", c.Name, p.name, p.service))
		}
	}
	return errs
}

func checkBundleMount(spec *corev1.PodSpec, c *corev1.Container) []error {
	bundle, ok := envValue(c, "LMROUTE_BUNDLE")
	if !ok {
		bundle = DefaultBundle
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath != bundle && !isUnder(bundle, m.MountPath) {
			continue
		}
		var errs []error
		if !m.ReadOnly {
			errs = append(errs, fmt.Errorf("container %q: the bundle volume %q at %s must be mounted readOnly", c.Name, m.Name, m.MountPath))
		}
		if findVolume(spec, m.Name) == nil {
			errs = append(errs, fmt.Errorf("container %q: mount %q names no volume of the pod", c.Name, m.Name))
		}
		return errs
	}
	return []error{fmt.Errorf("container %q: the bundle %s (LMROUTE_BUNDLE) is not mounted from a volume", c.Name, bundle)}
}

func checkTmp(spec *corev1.PodSpec, c *corev1.Container) []error {
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/tmp" {
			if v := findVolume(spec, m.Name); v == nil || v.EmptyDir == nil {
				return []error{fmt.Errorf("container %q: /tmp must be an emptyDir volume", c.Name)}
			}
			return nil
		}
	}
	return []error{fmt.Errorf("container %q: no writable /tmp (an emptyDir) under a read-only root filesystem", c.Name)}
}

// checkAppTalksToRouter: some other regular container is configured with localhost:<router port>.
func checkAppTalksToRouter(spec *corev1.PodSpec, port int32) []error {
	want := map[string]bool{fmt.Sprintf("localhost:%d", port): true, fmt.Sprintf("127.0.0.1:%d", port): true}
	for _, c := range spec.Containers {
		if c.Name == RouterContainer {
			continue
		}
		for _, e := range c.Env {
			if want[e.Value] {
				return nil
			}
		}
	}
	return []error{fmt.Errorf("no application container has an env value localhost:%d (the router's address)", port)}
}

func checkSecurity(pod *corev1.PodSecurityContext, c *corev1.Container) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("container %q: "+format, append([]any{c.Name}, args...)...))
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	nonRoot := pod.RunAsNonRoot
	if sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		add("runAsNonRoot must be true (container or pod securityContext)")
	}
	uid := pod.RunAsUser
	if sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if uid != nil && *uid == 0 {
		add("runAsUser is 0 (root)")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		add("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		add("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		add("privileged must not be true")
	}
	dropsAll := false
	if sc.Capabilities != nil {
		for _, cap := range sc.Capabilities.Drop {
			dropsAll = dropsAll || cap == "ALL"
		}
		if len(sc.Capabilities.Add) > 0 {
			add("adds capabilities %v", sc.Capabilities.Add)
		}
	}
	if !dropsAll {
		add("capabilities must drop ALL")
	}
	seccomp := pod.SeccompProfile
	if sc.SeccompProfile != nil {
		seccomp = sc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		add("seccompProfile must be RuntimeDefault")
	}
	return errs
}

func checkResources(c *corev1.Container) []error {
	var errs []error
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[name]
		lim, hasLim := c.Resources.Limits[name]
		switch {
		case !hasReq || !hasLim:
			errs = append(errs, fmt.Errorf("container %q: resources.requests and resources.limits must both set %s", c.Name, name))
		case lim.Cmp(req) < 0:
			errs = append(errs, fmt.Errorf("container %q: %s limit %s is below the request %s", c.Name, name, lim.String(), req.String()))
		}
	}
	return errs
}

func allContainers(spec *corev1.PodSpec) []*corev1.Container {
	var out []*corev1.Container
	for i := range spec.InitContainers {
		out = append(out, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		out = append(out, &spec.Containers[i])
	}
	return out
}

func envValue(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func hasContainerPort(c *corev1.Container, port int32) bool {
	for _, p := range c.Ports {
		if p.ContainerPort == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			return true
		}
	}
	return false
}

func findVolume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// isUnder: p lies inside the directory dir.
func isUnder(p, dir string) bool {
	rel := path.Clean(p)
	d := path.Clean(dir)
	return len(rel) > len(d) && rel[:len(d)] == d && rel[len(d)] == '/'
}

// checkSidecarPolicies: a NetworkPolicy over the router's pods restricts ingress, and none of its rules
// admits the router's port (or every port): only the pod's own containers reach the router.
func checkSidecarPolicies(ms []Manifest, routerPorts map[int32]bool) []error {
	var errs []error
	policies := 0
	for _, m := range ms {
		d, ok := m.Object.(*appsv1.Deployment)
		if !ok {
			continue
		}
		pods := labels.Set(d.Spec.Template.Labels)
		for _, pm := range ms {
			p, ok := pm.Object.(*networkingv1.NetworkPolicy)
			if !ok || !selects(p.Spec.PodSelector.MatchLabels, pods) {
				continue
			}
			policies++
			for i, rule := range p.Spec.Ingress {
				if len(rule.Ports) == 0 {
					errs = append(errs, fmt.Errorf("%s: ingress[%d] names no port, so it admits the router's port too", pm.Where(), i))
				}
				for _, rp := range rule.Ports {
					if rp.Port != nil && routerPorts[int32(rp.Port.IntValue())] {
						errs = append(errs, fmt.Errorf("%s: ingress[%d] admits the router's port %d; only the pod's own containers may use it", pm.Where(), i, rp.Port.IntValue()))
					}
				}
			}
		}
	}
	if policies == 0 {
		errs = append(errs, fmt.Errorf("no NetworkPolicy over the router's pods: other pods could reach the router's port"))
	}
	return errs
}
