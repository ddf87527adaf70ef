{{/* Names and labels shared by every template. */}}

{{- define "ficus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ficus.operator.name" -}}
{{- printf "%s-operator" (include "ficus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ficus.chat.name" -}}
{{- printf "%s-chat" (include "ficus.fullname" .) | trunc 56 | trimSuffix "-" -}}
{{- end -}}

{{- define "ficus.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "ficus.labels.release" . }}
{{- end -}}

{{- /* The labels besides the instance, for objects that also carry a selector (which has it):
a key given twice is invalid YAML to strict parsers. */}}
{{- define "ficus.labels.release" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ficus
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "ficus.operator.selector" -}}
app.kubernetes.io/name: ficus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector of one chat deployment; call with (dict "root" $ "track" "legacy"). */}}
{{- define "ficus.chat.selector" -}}
app.kubernetes.io/name: chat-service
app.kubernetes.io/instance: {{ .root.Release.Name }}
ficus.dev/track: {{ .track }}
{{- end -}}

{{- define "ficus.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "ficus.webhook.secret" -}}
{{- default (printf "%s-webhook" (include "ficus.operator.name" .)) .Values.operator.webhook.existingSecret -}}
{{- end -}}

{{/* Whether to render the PrometheusRule: "auto" follows the cluster's served APIs. */}}
{{- define "ficus.prometheusRule.enabled" -}}
{{- $mode := toString .Values.chat.prometheusRule.enabled -}}
{{- if eq $mode "auto" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule" -}}true{{- end -}}
{{- else if eq $mode "true" -}}true
{{- end -}}
{{- end -}}
