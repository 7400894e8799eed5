{{/*
vncgate.proxy renders one console proxy (novnc-proxy, xvp-proxy): ConfigMap,
Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler.
Arguments: root, component, v (its values), ini (its own options by section),
portName (of the public port).
*/}}
{{- define "vncgate.proxy" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $tls := include "vncgate.tlsDir" $root -}}
{{- $vncgate := dict
  "admin_listen" (printf "0.0.0.0:%v" (int $v.adminPort))
  "admin_allow_remote" true
  "consoleauth_address" (include "vncgate.consoleauthAddress" $root)
  "shutdown_delay" (int $v.shutdownDelay)
  "drain_timeout" (int $v.drainTimeout)
  "trusted_proxies" $v.trustedProxies
  "log_format" $root.Values.log.format
  "log_level" $root.Values.log.level
-}}
{{- $vncgate = mergeOverwrite $vncgate (fromJson (include "vncgate.etcdConfig" $root)) (fromJson (include "vncgate.grpcTLS" $root)) -}}
{{- $ini := mergeOverwrite (dict "vncgate" $vncgate) .ini -}}
{{- if not $v.publicTLSSecret }}
{{- /* A plain public port: only behind a TLS-terminating load balancer. */}}
{{- $ini = mergeOverwrite $ini (dict "vncgate" (dict "allow_plaintext" true)) }}
{{- end }}
{{- if $v.publicTLSSecret }}
{{- $ini = mergeOverwrite $ini (dict "DEFAULT" (dict "cert" (printf "%s/public/tls.crt" $tls) "key" (printf "%s/public/tls.key" $tls))) }}
{{- if eq .component "novnc-proxy" }}
{{- /* No plain HTTP beside TLS on the public port: tokens would travel in clear. */}}
{{- $ini = mergeOverwrite $ini (dict "DEFAULT" (dict "ssl_only" true)) }}
{{- end }}
{{- end }}
{{- $ini = mergeOverwrite $ini (deepCopy $v.config) -}}
{{- $conf := include "vncgate.ini" $ini -}}
{{- $grace := include "vncgate.gracePeriod" $v -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "vncgate.name" $ctx }}
  labels:
    {{- include "vncgate.labels" $ctx | nindent 4 }}
data:
  # admin_allow_remote: the admin listener listens off loopback for the
  # kubelet's probes; allow_plaintext only without publicTLSSecret (a plain
  # public port behind a TLS-terminating load balancer).
  vncgate.conf: |
    {{- $conf | nindent 4 }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "vncgate.name" $ctx }}
  labels:
    {{- include "vncgate.labels" $ctx | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "vncgate.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # A new replica is ready before an old one starts draining.
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "vncgate.labels" $ctx | nindent 8 }}
      annotations:
        checksum/config: {{ $conf | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "vncgate.podCommon" (dict "root" $root) | nindent 6 }}
      terminationGracePeriodSeconds: {{ $grace }}
      containers:
        - name: {{ .component }}
          image: {{ include "vncgate.image" $ctx }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["--config-file", {{ include "vncgate.configFile" $root | quote }}]
          ports:
            - name: {{ .portName }}
              containerPort: {{ $v.port }}
              protocol: TCP
            - name: admin
              containerPort: {{ $v.adminPort }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /livez
              port: admin
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            periodSeconds: 2
            failureThreshold: 2
          lifecycle:
            # Endpoints are removed while this runs; the proxy goes on serving
            # until SIGTERM, then shutdown_delay, then drains.
            preStop:
              sleep:
                seconds: {{ $v.preStopSleep }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "vncgate.commonMounts" $root | nindent 12 }}
            {{- if $v.publicTLSSecret }}
            - name: tls-public
              mountPath: {{ $tls }}/public
              readOnly: true
            {{- end }}
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
      volumes:
        {{- include "vncgate.commonVolumes" (dict "root" $root "component" .component "secret" $root.Values.tls.proxySecret) | nindent 8 }}
        {{- if $v.publicTLSSecret }}
        - name: tls-public
          secret:
            secretName: {{ $v.publicTLSSecret }}
            defaultMode: 0440
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "vncgate.name" $ctx }}
  labels:
    {{- include "vncgate.labels" $ctx | nindent 4 }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "vncgate.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ $v.service.port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- if $v.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "vncgate.name" $ctx }}
  labels:
    {{- include "vncgate.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "vncgate.selectorLabels" $ctx | nindent 6 }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- $a := $v.autoscaling }}
{{- if and (kindIs "invalid" $a.targetCPUUtilizationPercentage) (kindIs "invalid" $a.targetSessionsPerPod) }}
{{- fail (printf "%s autoscaling: set targetCPUUtilizationPercentage or targetSessionsPerPod, or turn autoscaling off" .component) }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "vncgate.name" $ctx }}
  labels:
    {{- include "vncgate.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "vncgate.name" $ctx }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- if not (kindIs "invalid" $a.targetCPUUtilizationPercentage) }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
    {{- end }}
    {{- if not (kindIs "invalid" $a.targetSessionsPerPod) }}
    - type: Pods
      pods:
        metric:
          name: {{ $a.sessionsMetric }}
        target:
          type: AverageValue
          averageValue: {{ $a.targetSessionsPerPod | quote }}
    {{- end }}
  behavior:
    scaleDown:
      # Every pod removed drains its live sessions: scale down slowly.
      stabilizationWindowSeconds: {{ $a.scaleDownStabilizationSeconds }}
      policies:
        - type: Pods
          value: 1
          periodSeconds: 60
{{- end }}
{{- end -}}
