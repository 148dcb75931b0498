package validate

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// CheckShared checks the shared router service (deploy/k8s/shared): its own Deployment, reachable over a
// Service, so TLS and tokens from Secrets, probes that speak TLS, a NetworkPolicy that admits only named
// callers to the router's port, an HPA on the Deployment and a PodDisruptionBudget over its pods.
func CheckShared(ms []Manifest) []error {
	var errs []error
	var dep *appsv1.Deployment
	var depWhere string
	policies, hpas, pdbs := 0, 0, 0
	for _, m := range ms {
		if d, ok := m.Object.(*appsv1.Deployment); ok {
			if dep != nil {
				errs = append(errs, fmt.Errorf("%s: more than one Deployment", m.Where()))
			}
			dep, depWhere = d, m.Where()
		}
	}
	if dep == nil {
		return []error{fmt.Errorf("no apps/v1 Deployment among the manifests")}
	}
	spec := &dep.Spec.Template.Spec
	pods := labels.Set(dep.Spec.Template.Labels)
	router, port, err := sharedRouter(spec)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", depWhere, err)}
	}
	for _, e := range checkSharedRouter(spec, router, port) {
		errs = append(errs, fmt.Errorf("%s: %w", depWhere, e))
	}
	for _, m := range ms {
		switch o := m.Object.(type) {
		case *networkingv1.NetworkPolicy:
			policies++
			for _, e := range checkPolicy(o, pods, port) {
				errs = append(errs, fmt.Errorf("%s: %w", m.Where(), e))
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			hpas++
			ref := o.Spec.ScaleTargetRef
			if ref.Kind != "Deployment" || ref.Name != dep.Name {
				errs = append(errs, fmt.Errorf("%s: scaleTargetRef is %s %q, not the router's Deployment %q", m.Where(), ref.Kind, ref.Name, dep.Name))
			}
			if o.Spec.MinReplicas == nil || *o.Spec.MinReplicas < 2 {
				errs = append(errs, fmt.Errorf("%s: minReplicas must be >= 2 (one replica is a single point of failure)", m.Where()))
			}
		case *policyv1.PodDisruptionBudget:
			pdbs++
			if !selects(o.Spec.Selector.MatchLabels, pods) {
				errs = append(errs, fmt.Errorf("%s: selector does not select the router's pods %v", m.Where(), pods))
			}
			if o.Spec.MinAvailable == nil && o.Spec.MaxUnavailable == nil {
				errs = append(errs, fmt.Errorf("%s: set minAvailable or maxUnavailable", m.Where()))
			}
		}
	}
	if policies == 0 {
		errs = append(errs, fmt.Errorf("no NetworkPolicy: the router's port would be open to every pod of the cluster"))
	}
	if hpas == 0 {
		errs = append(errs, fmt.Errorf("no HorizontalPodAutoscaler for the router's Deployment"))
	}
	if pdbs == 0 {
		errs = append(errs, fmt.Errorf("no PodDisruptionBudget for the router's pods"))
	}
	return errs
}

func sharedRouter(spec *corev1.PodSpec) (*corev1.Container, int32, error) {
	for i := range spec.Containers {
		if spec.Containers[i].Name == RouterContainer {
			c := &spec.Containers[i]
			port, err := routerPort(c)
			return c, port, err
		}
	}
	return nil, 0, fmt.Errorf("no container named %q (the router) among the containers", RouterContainer)
}

func checkSharedRouter(spec *corev1.PodSpec, c *corev1.Container, port int32) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !hasContainerPort(c, port) {
		add("container %q: no containerPort %d, the port the router listens on", c.Name, port)
	}
	if host, _ := envValue(c, "LMROUTE_HOST"); host != "0.0.0.0" && host != "::" {
		add("container %q: LMROUTE_HOST=%q: a shared router listens on the pod IP (0.0.0.0)", c.Name, host)
	}
	for _, name := range []string{"LMROUTE_TLS_CERT_FILE", "LMROUTE_TLS_KEY_FILE", "LMROUTE_AUTH_TOKENS_FILE"} {
		path, ok := envValue(c, name)
		if !ok {
			add("container %q: %s is not set: a router reached over a Service needs TLS and tokens", c.Name, name)
			continue
		}
		if !underSecretMount(spec, c, path) {
			add("container %q: %s=%s is not inside a read-only mount of a Secret volume", c.Name, name, path)
		}
	}
	probes := []struct {
		name    string
		probe   *corev1.Probe
		service bool
	}{{"readinessProbe", c.ReadinessProbe, true}, {"livenessProbe", c.LivenessProbe, false}, {"startupProbe", c.StartupProbe, true}}
	for _, p := range probes {
		if p.probe == nil {
			if p.name != "startupProbe" {
				add("container %q: no %s", c.Name, p.name)
			}
			continue
		}
		if p.probe.Exec == nil || len(p.probe.Exec.Command) == 0 || p.probe.Exec.Command[0] != "grpc-health-probe" {
			add("container %q: %s must run grpc-health-probe (the kubelet's gRPC probes do not speak TLS)", c.Name, p.name)
			continue
		}
		args := strings.Join(p.probe.Exec.Command[1:], " ")
		if !strings.Contains(args, "-tls ") && !strings.HasSuffix(args, "-tls") {
			add("container %q: %s must pass -tls (the port speaks TLS only)", c.Name, p.name)
		}
		if !strings.Contains(args, fmt.Sprintf("-addr=127.0.0.1:%d", port)) {
			add("container %q: %s must dial -addr=127.0.0.1:%d", c.Name, p.name, port)
		}
		if p.service && !strings.Contains(args, "-service="+RouterService) {
			add("container %q: %s must ask for -service=%s (SERVING once the bundle is warm)", c.Name, p.name, RouterService)
		}
	}
	errs = append(errs, checkBundleMount(spec, c)...)
	errs = append(errs, checkTmp(spec, c)...)
	for _, k := range allContainers(spec) {
		errs = append(errs, checkSecurity(spec.SecurityContext, k)...)
		errs = append(errs, checkResources(k)...)
	}
	return errs
}

// underSecretMount: path lies under a read-only volumeMount of c whose volume is a Secret.
func underSecretMount(spec *corev1.PodSpec, c *corev1.Container, path string) bool {
	for _, vm := range c.VolumeMounts {
		if !vm.ReadOnly || !isUnder(path, vm.MountPath) {
			continue
		}
		if v := findVolume(spec, vm.Name); v != nil && v.Secret != nil {
			return true
		}
	}
	return false
}

// checkPolicy: a policy over the router's pods restricts ingress, and the router's port only to named peers.
func checkPolicy(p *networkingv1.NetworkPolicy, pods labels.Set, port int32) []error {
	if !selects(p.Spec.PodSelector.MatchLabels, pods) {
		return nil // about other pods
	}
	var errs []error
	ingress := false
	for _, t := range p.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
	}
	if !ingress {
		errs = append(errs, fmt.Errorf("policyTypes must include Ingress"))
	}
	admitted := false
	for i, rule := range p.Spec.Ingress {
		for _, rp := range rule.Ports {
			admitted = admitted || (rp.Port != nil && rp.Port.IntValue() == int(port))
		}
		if len(rule.From) == 0 {
			errs = append(errs, fmt.Errorf("ingress[%d] has no `from`: it admits every pod of the cluster", i))
		}
		if len(rule.Ports) == 0 {
			errs = append(errs, fmt.Errorf("ingress[%d] names no port: it opens every port of the router's pods", i))
		}
		for _, peer := range rule.From {
			if peer.IPBlock != nil {
				errs = append(errs, fmt.Errorf("ingress[%d]: an ipBlock peer; name the callers by pod / namespace labels", i))
			}
			empty := peer.PodSelector != nil && len(peer.PodSelector.MatchLabels) == 0 && len(peer.PodSelector.MatchExpressions) == 0 && peer.NamespaceSelector == nil
			if empty {
				errs = append(errs, fmt.Errorf("ingress[%d]: an empty podSelector admits every pod of the namespace", i))
			}
		}
	}
	if !admitted {
		errs = append(errs, fmt.Errorf("no ingress rule admits the router's port %d: no caller could reach it", port))
	}
	return errs
}

// selects: a matchLabels selector (non-empty) matches the pods' labels.
func selects(match map[string]string, pods labels.Set) bool {
	return len(match) > 0 && labels.SelectorFromSet(match).Matches(pods)
}
