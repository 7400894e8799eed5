package helm

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/vncgate/vncgate/pkg/config"
)

// workload is one rendered service: its pod template, its one container and
// the configuration file the container is given.
type workload struct {
	component string
	obj       *unstructured.Unstructured
	pod       map[string]any
	container map[string]any
	conf      string // the ConfigMap's vncgate.conf
}

// workloads finds the Deployments and DaemonSets of a rendering, each
// with the ConfigMap its "config" volume names.
func workloads(t *testing.T, objs []*unstructured.Unstructured) []workload {
	t.Helper()
	configMaps := map[string]map[string]any{}
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" {
			data, _, _ := unstructured.NestedMap(o.Object, "data")
			configMaps[o.GetName()] = data
		}
	}
	var out []workload
	for _, o := range objs {
		if o.GetKind() != "Deployment" && o.GetKind() != "DaemonSet" {
			continue
		}
		pod, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
		containers, _ := pod["containers"].([]any)
		if len(containers) != 1 {
			t.Fatalf("%s %s: %d containers, want 1", o.GetKind(), o.GetName(), len(containers))
		}
		w := workload{
			component: o.GetLabels()["app.kubernetes.io/component"],
			obj:       o,
			pod:       pod,
			container: containers[0].(map[string]any),
		}
		for _, v := range list(pod["volumes"]) {
			if v["name"] != "config" {
				continue
			}
			name, _, _ := unstructured.NestedString(v, "configMap", "name")
			data, ok := configMaps[name]
			if !ok {
				t.Fatalf("%s: ConfigMap %q not rendered", o.GetName(), name)
			}
			w.conf, _ = data["vncgate.conf"].(string)
		}
		if w.conf == "" {
			t.Fatalf("%s: no vncgate.conf in its config volume", o.GetName())
		}
		out = append(out, w)
	}
	return out
}

func list(v any) []map[string]any {
	items, _ := v.([]any)
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// listenOptions are, per service, the options that open a port, by the
// name of the container port that must publish it ("" for none: the
// compute agent's loopback admin listener, which the kubelet reaches on the
// host's loopback).
var listenOptions = map[string]map[string]string{
	"consoleauth":   {"grpc_listen": "grpc", "rest_listen": "rest", "admin_listen": "admin"},
	"novnc-proxy":   {"novncproxy_port": "http", "admin_listen": "admin"},
	"xvp-proxy":     {"xvpvncproxy_port": "xvp", "admin_listen": "admin"},
	"compute-agent": {"grpc_listen": "grpc", "admin_listen": ""},
}

// settings is what the chart's agreement with a service rests on, read
// from the rendered file by pkg/config, the loader every service uses
// (same syntax, sections, units and interpolation).
type settings struct {
	ports                        map[string]int // listen option: port
	adminHost                    string
	shutdownDelay, drainTimeout  time.Duration
	advertiseAddress, grpcListen string
}

func readSettings(t *testing.T, w workload) settings {
	t.Helper()
	file := filepath.Join(t.TempDir(), "vncgate.conf")
	if err := os.WriteFile(file, []byte(w.conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := config.New(w.component)
	var admin, grpcListen, restListen, advertise string
	novncPort, xvpPort := -1, -1
	// -1: not set by the file (the chart sets each of these itself).
	shutdownDelay, drainTimeout := time.Duration(-1), time.Duration(-1)
	s.String(&admin, config.SectionVNCGate, "admin_listen", "", "")
	switch w.component {
	case "consoleauth":
		s.String(&grpcListen, config.SectionVNCGate, "grpc_listen", "", "")
		s.String(&restListen, config.SectionVNCGate, "rest_listen", "", "")
	case "compute-agent":
		s.String(&grpcListen, config.SectionVNCGate, "grpc_listen", "", "")
		s.String(&advertise, config.SectionVNCGate, "advertise_address", "", "")
	case "novnc-proxy":
		s.Int(&novncPort, config.SectionVNC, "novncproxy_port", -1, "")
	case "xvp-proxy":
		s.Int(&xvpPort, config.SectionVNC, "xvpvncproxy_port", -1, "")
	default:
		t.Fatalf("unknown component %q", w.component)
	}
	if strings.HasSuffix(w.component, "-proxy") {
		s.Seconds(&shutdownDelay, config.SectionVNCGate, "shutdown_delay", -1, "")
		s.Seconds(&drainTimeout, config.SectionVNCGate, "drain_timeout", -1, "")
	}
	if _, err := s.Load([]string{"--config-file", file}); err != nil {
		t.Fatalf("%s: %v\n%s", w.component, err, w.conf)
	}
	out := settings{ports: map[string]int{}, shutdownDelay: shutdownDelay, drainTimeout: drainTimeout,
		advertiseAddress: advertise, grpcListen: grpcListen}
	addrPort := func(option, addr string) (string, int) {
		host, port, err := net.SplitHostPort(addr)
		n, err2 := strconv.Atoi(port)
		if err != nil || err2 != nil {
			t.Fatalf("%s %s = %q: want host:port", w.component, option, addr)
		}
		return host, n
	}
	out.adminHost, out.ports["admin_listen"] = addrPort("admin_listen", admin)
	for option, addr := range map[string]string{"grpc_listen": grpcListen, "rest_listen": restListen} {
		if addr != "" {
			_, out.ports[option] = addrPort(option, addr)
		}
	}
	for option, port := range map[string]int{"novncproxy_port": novncPort, "xvpvncproxy_port": xvpPort} {
		if port != -1 {
			out.ports[option] = port
		}
	}
	return out
}

// containerPorts maps the container's port names to numbers.
func containerPorts(w workload) map[string]int {
	out := map[string]int{}
	for _, p := range list(w.container["ports"]) {
		name, _ := p["name"].(string)
		n, _ := p["containerPort"].(int64)
		out[name] = int(n)
	}
	return out
}

// TestChartAgreesWithServices: what Kubernetes is told about each pod
// (ports, probes, grace period, host identity) is what the service's
// rendered configuration makes it do.
func TestChartAgreesWithServices(t *testing.T) {
	for _, overlay := range []string{"minimal", "everything", "small"} {
		t.Run(overlay, func(t *testing.T) {
			for _, w := range workloads(t, render(t, overlay)) {
				t.Run(w.component, func(t *testing.T) { checkWorkload(t, w) })
			}
		})
	}
}

func checkWorkload(t *testing.T, w workload) {
	cfg := readSettings(t, w)
	ports := containerPorts(w)
	hostNetwork, _ := w.pod["hostNetwork"].(bool)

	// Every listener is published under its name, and nothing else is.
	published := map[string]bool{}
	for option, portName := range listenOptions[w.component] {
		port, ok := cfg.ports[option]
		if !ok {
			t.Errorf("%s is not set in the rendered configuration", option)
			continue
		}
		if portName == "" {
			continue
		}
		published[portName] = true
		if ports[portName] != port {
			t.Errorf("container port %q is %d, want %s's %d", portName, ports[portName], option, port)
		}
	}
	for name := range ports {
		if !published[name] {
			t.Errorf("container port %q matches no listen option", name)
		}
	}

	// Probes reach the admin listener: its port, its paths, and an address
	// it listens on (the pod's IP, or the host's loopback with hostNetwork).
	for probe, path := range map[string]string{"livenessProbe": "/livez", "readinessProbe": "/readyz"} {
		get, _, _ := unstructured.NestedMap(w.container, probe, "httpGet")
		if get == nil {
			t.Errorf("%s: no httpGet", probe)
			continue
		}
		if get["path"] != path {
			t.Errorf("%s path %v, want %s", probe, get["path"], path)
		}
		port := -1
		switch p := get["port"].(type) {
		case string:
			if n, ok := ports[p]; ok {
				port = n
			}
		case int64:
			port = int(p)
		}
		if port != cfg.ports["admin_listen"] {
			t.Errorf("%s port %v (%d), want admin_listen's %d", probe, get["port"], port, cfg.ports["admin_listen"])
		}
		host, _ := get["host"].(string)
		wildcard := cfg.adminHost == "" || net.ParseIP(cfg.adminHost).IsUnspecified()
		switch {
		case hostNetwork && !wildcard && host != cfg.adminHost:
			t.Errorf("%s host %q: the kubelet would miss admin_listen's %s", probe, host, cfg.adminHost)
		case !hostNetwork && (!wildcard || host != ""):
			t.Errorf("%s host %q, admin_listen host %q: the kubelet probes the pod's IP, so admin_listen must listen on all addresses", probe, host, cfg.adminHost)
		}
	}

	// A deleted proxy pod is killed only after it drained.
	if strings.HasSuffix(w.component, "-proxy") {
		if cfg.shutdownDelay < 0 || cfg.drainTimeout < 0 {
			t.Fatalf("shutdown_delay %v, drain_timeout %v: the chart must set both", cfg.shutdownDelay, cfg.drainTimeout)
		}
		grace, _ := w.pod["terminationGracePeriodSeconds"].(int64)
		sleep, _, _ := unstructured.NestedInt64(w.container, "lifecycle", "preStop", "sleep", "seconds")
		if sleep <= 0 {
			t.Errorf("preStop sleep %d s: want a pause while endpoints are updated", sleep)
		}
		need := time.Duration(sleep)*time.Second + cfg.shutdownDelay + cfg.drainTimeout
		if time.Duration(grace)*time.Second <= need {
			t.Errorf("terminationGracePeriodSeconds %d, want more than preStop %d s + shutdown_delay %v + drain_timeout %v", grace, sleep, cfg.shutdownDelay, cfg.drainTimeout)
		}
	}

	// The agent: the host's network, its name and address from the
	// downward API, and an advertised address derived from them.
	if w.component == "compute-agent" {
		if !hostNetwork || w.pod["dnsPolicy"] != "ClusterFirstWithHostNet" {
			t.Errorf("hostNetwork %v, dnsPolicy %v: want true and ClusterFirstWithHostNet", hostNetwork, w.pod["dnsPolicy"])
		}
		env := map[string]string{}
		for _, e := range list(w.container["env"]) {
			path, _, _ := unstructured.NestedString(e, "valueFrom", "fieldRef", "fieldPath")
			env[e["name"].(string)] = path
		}
		if env[config.EnvPrefix+"HOST"] != "spec.nodeName" || env[config.EnvPrefix+"MY_IP"] != "status.hostIP" {
			t.Errorf("env %v: want %sHOST from spec.nodeName and %sMY_IP from status.hostIP", env, config.EnvPrefix, config.EnvPrefix)
		}
		// An empty advertise_address is grpc_listen with its wildcard host
		// replaced by my_ip (services/compute-agent advertiseFrom).
		host, _, _ := net.SplitHostPort(cfg.grpcListen)
		if cfg.advertiseAddress != "" || !net.ParseIP(host).IsUnspecified() {
			t.Errorf("advertise_address %q, grpc_listen %q: want the address derived from my_ip", cfg.advertiseAddress, cfg.grpcListen)
		}
	} else if hostNetwork {
		t.Errorf("hostNetwork on %s", w.component)
	}

	checkHardening(t, w)
	checkFilesMounted(t, w)
}

// checkHardening: non-root 65532 (the images' user), read-only root, no
// capabilities, RuntimeDefault seccomp, the image `make images` names.
func checkHardening(t *testing.T, w workload) {
	t.Helper()
	for _, c := range []struct {
		obj  map[string]any
		path []string
		want any
	}{
		{w.pod, []string{"securityContext", "runAsNonRoot"}, true},
		{w.pod, []string{"securityContext", "runAsUser"}, int64(65532)},
		{w.pod, []string{"securityContext", "seccompProfile", "type"}, "RuntimeDefault"},
		{w.pod, []string{"automountServiceAccountToken"}, false},
		{w.container, []string{"securityContext", "readOnlyRootFilesystem"}, true},
		{w.container, []string{"securityContext", "allowPrivilegeEscalation"}, false},
	} {
		got, _, _ := unstructured.NestedFieldNoCopy(c.obj, c.path...)
		if got != c.want {
			t.Errorf("%s = %v, want %v", strings.Join(c.path, "."), got, c.want)
		}
	}
	drop, _, _ := unstructured.NestedStringSlice(w.container, "securityContext", "capabilities", "drop")
	if !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", drop)
	}
	image, _ := w.container["image"].(string)
	if !strings.Contains(image, "/"+w.component+":") {
		t.Errorf("image %q: want REPOSITORY/%s:TAG", image, w.component)
	}
}

// fileOptions name files the service opens.
var fileOptions = regexp.MustCompile(`^(\w+_)?(cert|key|ca|file)$`)

// checkFilesMounted: every file the configuration names lies in a mounted
// volume, and the certificate files are the keys cert-manager writes.
func checkFilesMounted(t *testing.T, w workload) {
	t.Helper()
	var mounts []string
	for _, m := range list(w.container["volumeMounts"]) {
		mounts = append(mounts, m["mountPath"].(string))
	}
	for _, line := range strings.Split(w.conf, "\n") {
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || value == "" || !fileOptions.MatchString(name) {
			continue
		}
		if !slices.ContainsFunc(mounts, func(m string) bool { return strings.HasPrefix(value, m+"/") }) {
			t.Errorf("%s = %s: not in a mounted volume (%v)", name, value, mounts)
		}
		if base := filepath.Base(value); strings.HasPrefix(filepath.Dir(value), "/etc/vncgate/tls/") &&
			!slices.Contains([]string{"tls.crt", "tls.key", "ca.crt"}, base) {
			t.Errorf("%s = %s: want one of cert-manager's tls.crt, tls.key, ca.crt", name, value)
		}
	}
}

// TestObjectsReferToEachOther: every Service, PodDisruptionBudget and
// HorizontalPodAutoscaler finds the pods or Deployment it is about, and a
// Service's target ports are ports those pods name.
func TestObjectsReferToEachOther(t *testing.T) {
	for _, overlay := range []string{"minimal", "everything", "small"} {
		t.Run(overlay, func(t *testing.T) {
			objs := render(t, overlay)
			ws := workloads(t, objs)
			selected := func(selector map[string]string) []workload {
				var out []workload
				for _, w := range ws {
					labels, _, _ := unstructured.NestedStringMap(w.obj.Object, "spec", "template", "metadata", "labels")
					match := len(selector) > 0
					for k, v := range selector {
						match = match && labels[k] == v
					}
					if match {
						out = append(out, w)
					}
				}
				return out
			}
			for _, o := range objs {
				switch o.GetKind() {
				case "Service":
					sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector")
					pods := selected(sel)
					if len(pods) != 1 {
						t.Errorf("Service %s selects %d workloads, want 1", o.GetName(), len(pods))
						continue
					}
					ports, _, _ := unstructured.NestedSlice(o.Object, "spec", "ports")
					for _, p := range list(ports) {
						if _, ok := containerPorts(pods[0])[p["targetPort"].(string)]; !ok {
							t.Errorf("Service %s targets port %v, which %s does not name", o.GetName(), p["targetPort"], pods[0].obj.GetName())
						}
					}
				case "PodDisruptionBudget":
					sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
					if n := len(selected(sel)); n != 1 {
						t.Errorf("PodDisruptionBudget %s selects %d workloads, want 1", o.GetName(), n)
					}
				case "HorizontalPodAutoscaler":
					kind, _, _ := unstructured.NestedString(o.Object, "spec", "scaleTargetRef", "kind")
					name, _, _ := unstructured.NestedString(o.Object, "spec", "scaleTargetRef", "name")
					found := slices.ContainsFunc(ws, func(w workload) bool { return w.obj.GetKind() == kind && w.obj.GetName() == name })
					if !found {
						t.Errorf("HorizontalPodAutoscaler %s scales %s %s, which is not rendered", o.GetName(), kind, name)
					}
					for _, w := range ws {
						if w.obj.GetName() == name {
							if _, set, _ := unstructured.NestedFieldNoCopy(w.obj.Object, "spec", "replicas"); set {
								t.Errorf("Deployment %s sets replicas beside its autoscaler: every upgrade would reset the scale", name)
							}
						}
					}
				}
			}
		})
	}
}
