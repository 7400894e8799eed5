package helm

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// The Kubernetes release whose API schema the chart is checked against:
// its OpenAPI v3 documents ship in the k8s.io/kubernetes module
// (api/openapi-spec/v3), fetched through the module proxy into the module
// cache. kubernetesSum pins the module's content (go.sum's h1: hash).
const (
	kubernetesModule  = "k8s.io/kubernetes"
	kubernetesVersion = "v1.37.2"
	kubernetesSum     = "h1:A2VDEiObzkYqFTKhSsn0ZEb0RlLEXpHWj93gi2HqEwE="
)

var (
	schemaOnce sync.Once
	schemaVal  *Schema
	schemaErr  error
)

// kubeSchema loads the Kubernetes API schema once per test process.
func kubeSchema(t *testing.T) *Schema {
	t.Helper()
	schemaOnce.Do(func() {
		// A module not in this module's build list: go mod download
		// fetches it into the module cache (once; later runs are offline)
		// and checks it against the checksum database.
		out, err := exec.Command("go", "mod", "download", "-json", kubernetesModule+"@"+kubernetesVersion).Output()
		if err != nil {
			schemaErr = fmt.Errorf("go mod download %s@%s: %w\n%s", kubernetesModule, kubernetesVersion, err, out)
			return
		}
		var m struct{ Dir, Sum, Error string }
		if err := json.Unmarshal(out, &m); err != nil {
			schemaErr = fmt.Errorf("go mod download: %w", err)
			return
		}
		switch {
		case m.Error != "":
			schemaErr = fmt.Errorf("go mod download %s@%s: %s", kubernetesModule, kubernetesVersion, m.Error)
			return
		case m.Sum != kubernetesSum:
			schemaErr = fmt.Errorf("%s@%s: sum %s, want %s", kubernetesModule, kubernetesVersion, m.Sum, kubernetesSum)
			return
		}
		schemaVal, schemaErr = LoadSchema(filepath.Join(m.Dir, "api", "openapi-spec", "v3"))
	})
	if schemaErr != nil {
		t.Fatal(schemaErr)
	}
	return schemaVal
}

// release is what every test renders as.
var release = Release{Name: "vncgate", Namespace: "console", KubeVersion: kubernetesVersion}

// overlays are the value sets the tests render: what an operator would
// write, from the least the chart needs to every option turned.
var overlays = map[string]string{
	// The least an install needs: where etcd is.
	"minimal": `
etcd:
  endpoints: [https://etcd-0.etcd:2379, https://etcd-1.etcd:2379]
`,
	// TLS on every port, sessions-based autoscaling, other ports and drains.
	"everything": `
image: {repository: registry.example.com/vncgate, tag: v1.2.3}
imagePullSecrets: [{name: regcred}]
etcd:
  endpoints: [https://etcd.example.com:2379]
  timeout: 3
  tls: {caSecret: etcd-ca}
log: {format: text, level: debug}
consoleauth:
  replicas: 3
  grpcPort: 7090
  restPort: 7091
  adminPort: 7190
  tokenTTL: 300
  novncBaseURL: https://console.example.com/vnc_lite.html
  xvpBaseURL: https://console.example.com:6081/console
  rest: {tlsSecret: vncgate-rest, clientCertificates: true, apiKeysSecret: vncgate-api-keys}
  config:
    vncgate: {single_use_tokens: true, enabled_console_types: [novnc]}
  resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: [{key: dedicated, operator: Equal, value: control, effect: NoSchedule}]
novncProxy:
  port: 8443
  adminPort: 9180
  baseURL: https://console.example.com/vnc_lite.html
  publicTLSSecret: console-example-com
  trustedProxies: [10.0.0.0/8]
  shutdownDelay: 8
  drainTimeout: 600
  preStopSleep: 10
  terminationGracePeriodSeconds: 700
  service: {type: LoadBalancer, port: 443}
  autoscaling: {targetCPUUtilizationPercentage: null, targetSessionsPerPod: 500, maxReplicas: 30}
  config:
    vncgate: {max_sessions_per_instance: 2, ping_interval: 15}
    console: {allowed_origins: [console.example.com, console2.example.com]}
xvpProxy:
  publicTLSSecret: xvp-example-com
  trustedProxies: [192.0.2.10]
  drainTimeout: 120
  autoscaling: {targetSessionsPerPod: 300}
  pdb: {maxUnavailable: 2}
computeAgent:
  grpcPort: 7092
  adminPort: 7192
  socketGroup: 108
  tolerations: [{operator: Exists}]
  tlsVolume:
    csi:
      driver: csi.cert-manager.io
      readOnly: true
      volumeAttributes:
        csi.cert-manager.io/issuer-name: vncgate-ca
        csi.cert-manager.io/common-name: "${POD_NODE_NAME}"
        csi.cert-manager.io/ip-sans: "${POD_IP}"
        csi.cert-manager.io/uri-sans: urn:vncgate:role:compute
`,
	// Fewer parts: no XVP, fixed replicas, the static driver, plaintext etcd.
	"small": `
etcd:
  endpoints: [etcd.storage.svc:2379]
  tls: {enabled: false}
xvpProxy: {enabled: false}
novncProxy:
  replicas: 3
  autoscaling: {enabled: false}
  pdb: {enabled: false}
consoleauth:
  pdb: {enabled: false}
computeAgent:
  driver: static
  nodeSelector: {node-role.kubernetes.io/compute: ""}
  extraVolumes: [{name: inventory, configMap: {name: vncgate-inventory}}]
  extraVolumeMounts: [{name: inventory, mountPath: /etc/vncgate/inventory, readOnly: true}]
  config:
    vncgate: {inventory_file: /etc/vncgate/inventory/inventory.json, allow_plaintext: true}
`,
}

// values parses an overlay.
func values(t *testing.T, name string) map[string]any {
	t.Helper()
	src, ok := overlays[name]
	if !ok {
		t.Fatalf("no overlay %q", name)
	}
	var v map[string]any
	if err := yaml.Unmarshal([]byte(src), &v); err != nil {
		t.Fatalf("overlay %s: %v", name, err)
	}
	return v
}

// render renders the chart with an overlay.
func render(t *testing.T, name string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Render("vncgate", values(t, name), release)
	if err != nil {
		t.Fatalf("render %s: %v", name, err)
	}
	return objs
}

func TestEveryRenderedObjectMatchesKubernetesSchema(t *testing.T) {
	s := kubeSchema(t)
	for _, tc := range []struct {
		overlay string
		want    map[string]int // kind: count
	}{
		{"minimal", map[string]int{"ConfigMap": 4, "Deployment": 3, "DaemonSet": 1, "Service": 4, "PodDisruptionBudget": 3, "HorizontalPodAutoscaler": 2}},
		{"everything", map[string]int{"ConfigMap": 4, "Deployment": 3, "DaemonSet": 1, "Service": 4, "PodDisruptionBudget": 3, "HorizontalPodAutoscaler": 2}},
		{"small", map[string]int{"ConfigMap": 3, "Deployment": 2, "DaemonSet": 1, "Service": 3}},
	} {
		t.Run(tc.overlay, func(t *testing.T) {
			objs := render(t, tc.overlay)
			got := map[string]int{}
			for _, o := range objs {
				got[o.GetKind()]++
				if err := s.Validate(o); err != nil {
					t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
				}
				if ns := o.GetNamespace(); ns != "" && ns != release.Namespace {
					t.Errorf("%s %s: namespace %q, want the release's", o.GetKind(), o.GetName(), ns)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got kinds %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSchemaRejectsBrokenObjects proves the validator is not a rubber
// stamp: each deliberate mistake in a rendered Deployment is caught, with
// the path of the mistake in the message.
func TestSchemaRejectsBrokenObjects(t *testing.T) {
	s := kubeSchema(t)
	var deployment *unstructured.Unstructured
	for _, o := range render(t, "minimal") {
		if o.GetKind() == "Deployment" && strings.HasSuffix(o.GetName(), "novnc-proxy") {
			deployment = o
		}
	}
	if deployment == nil {
		t.Fatal("no novnc-proxy Deployment rendered")
	}
	container := func(o *unstructured.Unstructured) map[string]any {
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		return cs[0].(map[string]any)
	}
	for _, tc := range []struct {
		name   string
		mutate func(o *unstructured.Unstructured)
		want   string
	}{
		{"unknown field", func(o *unstructured.Unstructured) {
			c := container(o)
			c["imagePullPolcy"] = "Always"
			setContainer(o, c)
		}, "imagePullPolcy"},
		{"unknown field in the pod spec", func(o *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(o.Object, int64(3), "spec", "template", "spec", "terminationGracePeriod")
		}, "terminationGracePeriod"},
		{"string for an integer", func(o *unstructured.Unstructured) {
			_ = unstructured.SetNestedField(o.Object, "two", "spec", "replicas")
		}, "replicas"},
		{"object for a list", func(o *unstructured.Unstructured) {
			c := container(o)
			c["args"] = map[string]any{"config-file": "/etc/vncgate/vncgate.conf"}
			setContainer(o, c)
		}, "args"},
		{"missing required field", func(o *unstructured.Unstructured) {
			unstructured.RemoveNestedField(o.Object, "spec", "selector")
		}, "selector"},
		{"two containers of one name", func(o *unstructured.Unstructured) {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			_ = unstructured.SetNestedSlice(o.Object, append(cs, cs[0]), "spec", "template", "spec", "containers")
		}, "duplicate"},
		{"kind the API lacks", func(o *unstructured.Unstructured) {
			o.SetAPIVersion("apps/v2")
		}, "no such kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := deployment.DeepCopy()
			tc.mutate(o)
			err := s.Validate(o)
			if err == nil {
				t.Fatalf("got no error, want one naming %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	if err := s.Validate(deployment); err != nil {
		t.Errorf("the unbroken Deployment: %v", err)
	}
}

func setContainer(o *unstructured.Unstructured, c map[string]any) {
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	cs[0] = c
	_ = unstructured.SetNestedSlice(o.Object, cs, "spec", "template", "spec", "containers")
}

// TestBadValuesFailWithClearErrors: values the chart cannot honour stop
// the rendering with a sentence naming the value.
func TestBadValuesFailWithClearErrors(t *testing.T) {
	for _, tc := range []struct {
		name, overlay, want string
	}{
		{"no etcd", `{}`, "etcd.endpoints: name the members of an existing etcd cluster"},
		{"grace period within the drain", `
etcd: {endpoints: [etcd:2379]}
novncProxy: {terminationGracePeriodSeconds: 40}`, "terminationGracePeriodSeconds 40: must exceed preStopSleep + shutdownDelay + drainTimeout = 40"},
		{"autoscaling on nothing", `
etcd: {endpoints: [etcd:2379]}
xvpProxy: {autoscaling: {targetCPUUtilizationPercentage: null}}`, "xvp-proxy autoscaling: set targetCPUUtilizationPercentage or targetSessionsPerPod"},
		{"multi-line option value", `
etcd: {endpoints: [etcd:2379]}
consoleauth: {config: {vncgate: {rest_allowed_hosts: "a\nb"}}}`, "config [vncgate] rest_allowed_hosts: a value is one line"},
		{"bad option name", `
etcd: {endpoints: [etcd:2379]}
consoleauth: {config: {vncgate: {"a = b": x}}}`, `config [vncgate] "a = b": not an option name`},
		{"misspelt value", `
etcd: {endpoints: [etcd:2379]}
novncProxy: {drainTimout: 60}`, "drainTimout"},
		{"port out of range", `
etcd: {endpoints: [etcd:2379]}
xvpProxy: {port: 70000}`, "at '/xvpProxy/port': maximum"},
		{"REST API without authentication", `
etcd: {endpoints: [etcd:2379]}
consoleauth: {rest: {clientCertificates: false}}`, "the REST API has no way to authenticate callers"},
		{"section that is not a map", `
etcd: {endpoints: [etcd:2379]}
consoleauth: {config: {vncgate: 3}}`, "at '/consoleauth/config/vncgate': got number, want object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v map[string]any
			if err := yaml.Unmarshal([]byte(tc.overlay), &v); err != nil {
				t.Fatal(err)
			}
			_, err := Render("vncgate", v, release)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestChartLints runs `helm lint`'s checks (Chart.yaml, values, templates,
// YAML of every rendered file) for each value set; warnings fail too.
func TestChartLints(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubernetesVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, overlay := range []string{"minimal", "everything", "small"} {
		t.Run(overlay, func(t *testing.T) {
			l := lint.AllWithKubeVersion("vncgate", values(t, overlay), release.Namespace, kv)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m)
				} else {
					t.Log(m)
				}
			}
		})
	}
}
