{{/*
Labels of every object: `app: <app>` (the selector label, as upstream), the global k8sLabels
(app.kubernetes.io/*, rendered with tpl) and app.kubernetes.io/component.
Call with (dict "app" "dapr-sentry" "component" "sentry" "root" $).
*/}}
{{- define "dapr.labels" -}}
{{- if .app -}}
app: {{ .app }}
{{ end -}}
{{- range $key, $value := .root.Values.global.k8sLabels -}}
{{ $key }}: {{ tpl $value $.root | quote }}
{{ end -}}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Pod template labels: the object labels plus global.labels.
*/}}
{{- define "dapr.podLabels" -}}
{{ include "dapr.labels" . }}
{{- with .root.Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
An image reference: image.name as given when it contains "/", else <registry>/<name>:<tag>.
Call with (dict "name" .Values.dapr_sentry.image.name "root" $).
*/}}
{{- define "dapr.image" -}}
{{- if contains "/" .name -}}
{{ .name }}
{{- else -}}
{{ .root.Values.global.registry }}/{{ .name }}:{{ .root.Values.global.tag }}
{{- end -}}
{{- end }}

{{/*
The address of sentry's Service as sidecars and the injector dial it.
*/}}
{{- define "dapr.sentryAddress" -}}
{{- if .Values.global.mtls.sentryAddress -}}
{{ .Values.global.mtls.sentryAddress }}
{{- else -}}
dapr-sentry.{{ .Release.Namespace }}.svc{{ .Values.global.dnsSuffix }}:443
{{- end -}}
{{- end }}

{{/*
Sentry's SPIFFE id: the audience of the projected tokens presented to it.
*/}}
{{- define "dapr.sentrySpiffeId" -}}
spiffe://{{ .Values.global.mtls.controlPlaneTrustDomain }}/ns/{{ .Release.Namespace }}/dapr-sentry
{{- end }}

{{/*
Replicas: global.ha.replicaCount when HA is on, else the component's replicaCount.
Call with (dict "replicaCount" .Values.dapr_sentry.replicaCount "root" $).
*/}}
{{- define "dapr.replicas" -}}
{{- if .root.Values.global.ha.enabled -}}
{{ .root.Values.global.ha.replicaCount }}
{{- else -}}
{{ .replicaCount }}
{{- end -}}
{{- end }}

{{/*
The container securityContext shared by sentry and the injector.
Call with (dict "runAsNonRoot" .Values.dapr_sentry.runAsNonRoot "root" $).
*/}}
{{- define "dapr.containerSecurityContext" -}}
runAsNonRoot: {{ .runAsNonRoot }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- with .root.Values.global.seccompProfile }}
seccompProfile:
  type: {{ . }}
{{- end }}
{{- end }}

{{/*
Affinity: the control-plane OS (and architecture), plus pod anti-affinity across
global.ha.topologyKey when HA is on. Call with (dict "app" "dapr-sentry" "root" $).
*/}}
{{- define "dapr.affinity" -}}
{{- $g := .root.Values.global -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - key: kubernetes.io/os
            operator: In
            values: [{{ $g.daprControlPlaneOs | quote }}]
          {{- with $g.daprControlPlaneArch }}
          - key: kubernetes.io/arch
            operator: In
            values: [{{ . | quote }}]
          {{- end }}
{{- if $g.ha.enabled }}
{{- $term := dict "labelSelector" (dict "matchLabels" (dict "app" .app)) "topologyKey" $g.ha.topologyKey }}
podAntiAffinity:
  {{- if eq $g.ha.podAntiAffinityPolicy "requiredDuringSchedulingIgnoredDuringExecution" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
  {{- else if eq $g.ha.podAntiAffinityPolicy "preferredDuringSchedulingIgnoredDuringExecution" }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
  {{- else }}
  {{- fail (printf "global.ha.podAntiAffinityPolicy must be preferredDuringSchedulingIgnoredDuringExecution or requiredDuringSchedulingIgnoredDuringExecution, not %q" $g.ha.podAntiAffinityPolicy) }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Pod-spec fields shared by the control-plane Deployments: pull secrets, node selection,
tolerations, priority class.
*/}}
{{- define "dapr.podScheduling" -}}
{{- $g := .Values.global -}}
{{- with $g.imagePullSecrets }}
imagePullSecrets:
{{- if kindIs "string" . }}
{{- range (splitList "," .) }}
{{- if trim . }}
  - name: {{ trim . }}
{{- end }}
{{- end }}
{{- else }}
{{- range . }}
{{- if kindIs "string" . }}
  - name: {{ . }}
{{- else }}
  - name: {{ .name }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with $g.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
A PodDisruptionBudget for one control-plane Deployment, rendered only with global.ha.enabled.
Call with (dict "app" "dapr-sentry" "component" "sentry" "root" $).
*/}}
{{- define "dapr.pdb" -}}
{{- $d := .root.Values.global.ha.disruption -}}
{{- if .root.Values.global.ha.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .app }}-disruption-budget
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "dapr.labels" . | nindent 4 }}
spec:
  {{- if $d.minimumAvailable }}
  minAvailable: {{ $d.minimumAvailable }}
  {{- else if $d.maximumUnavailable }}
  maxUnavailable: {{ $d.maximumUnavailable }}
  {{- else }}
  {{- fail "global.ha.disruption: set minimumAvailable or maximumUnavailable" }}
  {{- end }}
  selector:
    matchLabels:
      app: {{ .app }}
{{- end }}
{{- end }}
