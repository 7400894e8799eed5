{{/* Object names: RELEASE-COMPONENT, cut to 63 characters. */}}
{{- define "vncgate.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vncgate.selectorLabels" -}}
app.kubernetes.io/name: vncgate
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vncgate.labels" -}}
{{ include "vncgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The image of a service, as `make images` names it: REPOSITORY/SERVICE:TAG. */}}
{{- define "vncgate.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .component .root.Values.image.tag -}}
{{- end -}}

{{/* Where pods mount their files. */}}
{{- define "vncgate.configFile" -}}/etc/vncgate/vncgate.conf{{- end -}}
{{- define "vncgate.tlsDir" -}}/etc/vncgate/tls{{- end -}}

{{/*
vncgate.ini renders a map of sections to options as the services' oslo.config
INI file: sections and options sorted ([DEFAULT] first), lists joined with
commas, booleans as true/false, whole numbers without exponent.
*/}}
{{- define "vncgate.ini" -}}
{{- range $section := keys . | sortAlpha }}
[{{ $section }}]
{{- $opts := index $ $section }}
{{- if not (kindIs "map" $opts) }}
{{- fail (printf "config section [%s]: want a map of options, got %v" $section $opts) }}
{{- end }}
{{- range $name := keys $opts | sortAlpha }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $name) }}
{{- fail (printf "config [%s] %q: not an option name" $section $name) }}
{{- end }}
{{ $name }} = {{ include "vncgate.iniValue" (dict "v" (index $opts $name) "section" $section "name" $name) }}
{{- end }}
{{ end }}
{{- end -}}

{{- define "vncgate.iniValue" -}}
{{- $v := .v -}}
{{- $s := "" -}}
{{- if kindIs "slice" $v -}}
{{- $s = join "," $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) }}{{ $s = int64 $v | toString }}{{ else }}{{ $s = toString $v }}{{ end -}}
{{- else if kindIs "invalid" $v -}}
{{- $s = "" -}}
{{- else -}}
{{- $s = toString $v -}}
{{- end -}}
{{- if or (contains "\n" $s) (contains "\r" $s) (gt (len $s) 4096) -}}
{{- fail (printf "config [%s] %s: a value is one line of at most 4096 characters" .section .name) -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{/* The etcd options every service shares. */}}
{{- define "vncgate.etcdConfig" -}}
{{- $v := .Values -}}
{{- if not $v.etcd.endpoints }}
{{- fail "etcd.endpoints: name the members of an existing etcd cluster (vncgate runs none), e.g. --set etcd.endpoints={https://etcd-0.etcd:2379}" }}
{{- end }}
{{- $out := dict "etcd_endpoints" $v.etcd.endpoints -}}
{{- if $v.etcd.tls.enabled }}
{{- $tls := include "vncgate.tlsDir" . }}
{{- $_ := set $out "etcd_cert" (printf "%s/role/tls.crt" $tls) }}
{{- $_ := set $out "etcd_key" (printf "%s/role/tls.key" $tls) }}
{{- $_ := set $out "etcd_ca" (ternary (printf "%s/etcd-ca/ca.crt" $tls) (printf "%s/role/ca.crt" $tls) (ne $v.etcd.tls.caSecret "")) }}
{{- end }}
{{- toJson $out -}}
{{- end -}}

{{/* The gRPC client certificate options of a role (grpc_cert, grpc_key, grpc_ca). */}}
{{- define "vncgate.grpcTLS" -}}
{{- $tls := include "vncgate.tlsDir" . -}}
{{- toJson (dict "grpc_cert" (printf "%s/role/tls.crt" $tls) "grpc_key" (printf "%s/role/tls.key" $tls) "grpc_ca" (printf "%s/role/ca.crt" $tls)) -}}
{{- end -}}

{{/* consoleauth's gRPC address for its clients: the headless Service, whose
name resolves to every ready replica (pkg/grpcclient round-robins over them). */}}
{{- define "vncgate.consoleauthAddress" -}}
{{- printf "%s.%s.svc:%v" (include "vncgate.name" (dict "root" . "component" "consoleauth-grpc")) .Release.Namespace (int .Values.consoleauth.grpcPort) -}}
{{- end -}}

{{/* Volumes and mounts of the role certificate, the etcd CA and the config. */}}
{{- define "vncgate.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "vncgate.name" (dict "root" .root "component" .component) }}
{{- if .tlsVolume }}
- name: tls-role
  {{- toYaml .tlsVolume | nindent 2 }}
{{- else }}
- name: tls-role
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
{{- end }}
{{- if and .root.Values.etcd.tls.enabled .root.Values.etcd.tls.caSecret }}
- name: tls-etcd-ca
  secret:
    secretName: {{ .root.Values.etcd.tls.caSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "vncgate.commonMounts" -}}
- name: config
  mountPath: {{ include "vncgate.configFile" . }}
  subPath: vncgate.conf
  readOnly: true
- name: tls-role
  mountPath: {{ include "vncgate.tlsDir" . }}/role
  readOnly: true
{{- if and .Values.etcd.tls.enabled .Values.etcd.tls.caSecret }}
- name: tls-etcd-ca
  mountPath: {{ include "vncgate.tlsDir" . }}/etcd-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* The terminationGracePeriodSeconds of a proxy: longer than what the pod
may still do after deletion (preStop sleep, shutdown_delay, drain_timeout). */}}
{{- define "vncgate.gracePeriod" -}}
{{- $need := add (int .preStopSleep) (int .shutdownDelay) (int .drainTimeout) -}}
{{- if kindIs "invalid" .terminationGracePeriodSeconds -}}
{{- add $need 10 -}}
{{- else if le (int .terminationGracePeriodSeconds) $need -}}
{{- fail (printf "terminationGracePeriodSeconds %v: must exceed preStopSleep + shutdownDelay + drainTimeout = %d, or the kubelet kills live sessions before the drain ends" .terminationGracePeriodSeconds $need) -}}
{{- else -}}
{{- int .terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The pod spec parts every workload shares; arguments root and, optionally,
psc (a pod securityContext replacing podSecurityContext). */}}
{{- define "vncgate.podCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml (.psc | default .root.Values.podSecurityContext) | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
