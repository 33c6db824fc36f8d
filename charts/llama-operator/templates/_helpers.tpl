{{/* Chart name, overridable. */}}
{{- define "llama-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name when the release name does not contain it. */}}
{{- define "llama-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llama-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "llama-operator.labels" -}}
helm.sh/chart: {{ include "llama-operator.chart" . }}
{{ include "llama-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator pod. */}}
{{- define "llama-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llama-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llama-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llama-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llama-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's config file (OperatorConfig, camelCase keys): GPU classes, CPU cost, engine
image overrides, Prometheus. Built as a dict and rendered with toYaml so numbers keep their form.
*/}}
{{- define "llama-operator.config" -}}
{{- $images := dict }}
{{- $keys := dict "vllm" "vllm" "tgi" "tgi" "llamacppCpu" "llamacpp_cpu" "llamacppCuda" "llamacpp_cuda" "downloader" "downloader" "s3Downloader" "s3_downloader" }}
{{- range $value, $key := $keys }}
{{- with index $.Values.engineImages $value }}
{{- $_ := set $images $key . }}
{{- end }}
{{- end }}
{{- $config := dict "gpuClasses" .Values.gpuClasses "cpuCostPerReplica" .Values.cpuCostPerReplica "images" $images }}
{{- with .Values.prometheusUrl }}
{{- $_ := set $config "prometheusUrl" . }}
{{- end }}
{{- with .Values.prometheusAllowedUrls }}
{{- $_ := set $config "prometheusAllowedUrls" . }}
{{- end }}
{{- with .Values.hubEndpoint }}
{{- $_ := set $config "hubEndpoint" . }}
{{- end }}
{{- if and .Values.dra.enabled .Values.dra.default }}
{{- $_ := set $config "deviceAllocation" "DRA" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Rules the operator needs in every namespace it watches (a ClusterRole when it watches all of
them, a Role per namespace otherwise). Each verb is used; see the comments.
*/}}
{{- define "llama-operator.namespacedRules" -}}
# LlamaDeployments: kopf lists and watches them (the operator's cache) and patches its annotations.
- apiGroups: ["llamaops.io"]
  resources: ["llamadeployments"]
  verbs: ["list", "watch", "patch"]
# Status is written through the status subresource, by kopf and by the operator; the
# autoscaler writes replicas through the scale subresource, as `kubectl scale` does.
- apiGroups: ["llamaops.io"]
  resources: ["llamadeployments/status", "llamadeployments/scale"]
  verbs: ["patch"]
# Children carry blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement admission
# plugin is on (e.g. OpenShift), that requires update on the owner's finalizers.
- apiGroups: ["llamaops.io"]
  resources: ["llamadeployments/finalizers"]
  verbs: ["update"]
# Children by server-side apply: patch, and create because applying a new object creates it.
# Every kind of child is watched into a cache: drift is reverted from its events, status read from it.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
{{- if .Values.rbac.serviceMonitors }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["list", "watch", "create", "patch"]
{{- end }}
{{- if .Values.inferencePool.enabled }}
# routing.inferencePool: an InferencePool per LlamaDeployment that asks for one, deleted when it stops asking.
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.keda.enabled }}
# autoscaling.mode: KEDA: a ScaledObject per LlamaDeployment (and a TriggerAuthentication naming its
# Prometheus token Secret), deleted when the object stops asking for KEDA.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects", "triggerauthentications"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.dra.enabled }}
# placement.deviceAllocation: DRA: one ResourceClaimTemplate per claim the pods make (its spec cannot
# change, so a new claim is a new template), deleted once no pod template names it.
- apiGroups: ["resource.k8s.io"]
  resources: ["resourceclaimtemplates"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.leaderWorkerSet.enabled }}
# Multi-node replicas: applied like a Deployment and watched for status.
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["list", "watch", "create", "patch"]
{{- end }}
# Shared model caches (model.cache): the claim is created by its first user, joined and left by the
# others (owner references, a conditional patch), deleted by its last; a Job owned by it fills it (and
# is deleted with it: its finished pod would hold the claim); the Job's log holds its progress lines.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Pods of the children are watched and listed to report readiness and scheduling reasons.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Adapter rollouts hold each pod out of its Service until its smoke request passes: the
# operator sets the pod's readiness-gate condition.
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
{{- with .Values.rbac.prometheusAuthSecrets }}
# The bearer tokens LlamaDeployments name in spec.autoscaling.prometheusAuthSecretRef: these
# Secrets only, read by name (never listed).
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
# Events on LlamaDeployments (Planned, DoesNotFit, InvalidSpec), posted by kopf.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
