{{/* Names, labels and shared fragments. Nothing here may be random or time-based:
     Argo CD compares renders, and any drift shows as OutOfSync. */}}

{{- define "qsys-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qsys-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qsys-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qsys-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qsys-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qsys-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qsys-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "qsys-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- /* The CRDs' labels: no component, since every release's operator uses them. */ -}}
{{- define "qsys-operator.crdLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "qsys-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "qsys-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) -}}
{{- end -}}

{{- define "qsys-operator.gatewayImage" -}}
{{- if .Values.gatewayImage.digest -}}
{{- printf "%s@%s" .Values.gatewayImage.repository .Values.gatewayImage.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.gatewayImage.repository (default .Chart.AppVersion (toString .Values.gatewayImage.tag)) -}}
{{- end -}}
{{- end -}}

{{/* "true" when an optional Prometheus Operator object is rendered, else "".
     Called with (list VALUE ROOT KIND); VALUE is auto, true or false. auto:
     the cluster serves monitoring.coreos.com/v1 with that kind (a cluster with
     only the ServiceMonitor CRD gets no PrometheusRule, instead of a failed install). */}}
{{- define "qsys-operator.monitoringEnabled" -}}
{{- $value := index . 0 -}}
{{- $root := index . 1 -}}
{{- $kind := index . 2 -}}
{{- if eq (toString $value) "auto" -}}
{{- if $root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind) -}}true{{- end -}}
{{- else if eq (toString $value) "true" -}}true
{{- end -}}
{{- end -}}

{{- define "qsys-operator.peering" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* RBAC rules the operator needs in every namespace it watches. Exactly the
     verbs its code uses (operator/qsys_operator/k8s.py and the Kopf handlers):
     server-side apply = create + patch; Kopf watches = list + watch. */}}
{{- define "qsys-operator.namespacedRules" -}}
- apiGroups: ["qsys.dev"]
  resources: ["qsyscores", "accesspolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["qsys.dev"]
  resources: ["qsyscores/status", "accesspolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Cluster-scoped reads needed in both modes: whether the ServiceMonitor CRD
     is served (and Kopf's watch of it). */}}
{{- define "qsys-operator.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* Read the API server's own endpoints (the EndpointSlice default/kubernetes; by
     name, so no other slice) for the egress rule of gateways that review ServiceAccount
     tokens. In the ClusterRole, so that the chart writes nothing into `default`. */}}
{{- define "qsys-operator.apiEndpointsRule" -}}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get"]
  resourceNames: ["kubernetes"]
{{- end -}}

{{/* The ClusterRole the operator binds to a gateway's ServiceAccount when its
     policies have serviceAccount subjects: TokenReview create, nothing else. */}}
{{- define "qsys-operator.tokenReviewRole" -}}
{{- printf "%s-gateway-tokenreview" (include "qsys-operator.fullname" .) -}}
{{- end -}}

{{/* Cluster-scoped grants for those ClusterRoleBindings (docs/security.md): manage
     the bindings (one per core, named qsys-gateway-tokenreview:NS:CORE), and `bind`
     only the chart's TokenReview role, so no binding to any other role can be made. */}}
{{- define "qsys-operator.gatewayIdentityRules" -}}
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterrolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
  resourceNames: [{{ include "qsys-operator.tokenReviewRole" . | quote }}]
{{- end -}}

{{/* The Secret (in the release namespace) of the key that signs generated tokens' proofs:
     created by the operator on first use, never by the chart (random). */}}
{{- define "qsys-operator.tokenProofSecret" -}}
{{- printf "%s-token-proof-key" (include "qsys-operator.fullname" .) | trunc 253 -}}
{{- end -}}

{{- define "qsys-operator.peeringRules" -}}
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end -}}

{{/* A map as k=v,k=v in key order (sorted: deterministic), for QSYS_DNS_POD_LABELS and
     QSYS_MONITORING_LABELS. */}}
{{- define "qsys-operator.kvList" -}}
{{- $map := . -}}
{{- $out := list -}}
{{- range $k := keys $map | sortAlpha -}}
{{- $out = append $out (printf "%s=%s" $k (index $map $k)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* Labels of every ServiceMonitor and PrometheusRule: monitoring.labels, then the
     object's own (serviceMonitor.labels / prometheusRule.labels), then the chart's. */}}
{{- define "qsys-operator.monitoringLabels" -}}
{{- $root := index . 0 -}}
{{- $own := index . 1 -}}
{{- $labels := merge (fromYaml (include "qsys-operator.labels" $root)) (deepCopy (default dict $own)) (deepCopy (default dict $root.Values.monitoring.labels)) -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* A list of strings as the items of a CEL list literal: 'a', 'b'. */}}
{{- define "qsys-operator.celStrings" -}}
{{- $items := list -}}
{{- range . -}}{{- $items = append $items (printf "'%s'" .) -}}{{- end -}}
{{- join ", " $items -}}
{{- end }}

{{/* Comma-separated names of a list of {name: ...} references (imagePullSecrets). */}}
{{- define "qsys-operator.secretNames" -}}
{{- $names := list -}}
{{- range . -}}{{- $names = append $names .name -}}{{- end -}}
{{- join "," $names -}}
{{- end }}
