{{/*
Chart name, overridable with nameOverride. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "tributary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the release's resources. Truncated to 63 characters (DNS label limit).
If the release name already contains the chart name, it is used as is.
*/}}
{{- define "tributary.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "tributary.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the subset of labels that identifies the operator pods. Immutable in a
Deployment's selector, so never add to them.
*/}}
{{- define "tributary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tributary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every resource of the chart.
*/}}
{{- define "tributary.labels" -}}
helm.sh/chart: {{ include "tributary.chart" . }}
{{ include "tributary.selectorLabels" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[^-A-Za-z0-9_.]" (.Values.image.tag | default .Chart.AppVersion) "_" | trunc 63 | trimAll "-_." | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tributary
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "tributary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference: repository:tag, pinned by digest when one is given.
*/}}
{{- define "tributary.image" -}}
{{- include "tributary.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
The tributary-relay image the operator puts into workloads (outbox relays, push dispatchers).
*/}}
{{- define "tributary.relayImage" -}}
{{- include "tributary.imageRef" (dict "image" .Values.relayImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
repository:tag[@digest] of an image block; the tag defaults to the chart's appVersion.
*/}}
{{- define "tributary.imageRef" -}}
{{- $ref := printf "%s:%s" .image.repository (.image.tag | default .appVersion) }}
{{- if .image.digest }}
{{- $ref = printf "%s@%s" $ref .image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
The address the operator's HTTP server listens on: host:port, IPv6 hosts in brackets.
*/}}
{{- define "tributary.listenAddress" -}}
{{- $host := .Values.operator.listenHost }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- printf "%s:%d" $host (int .Values.operator.port) }}
{{- end }}

{{/*
Where the Kafka properties file and the TLS files are mounted.
*/}}
{{- define "tributary.kafkaPropertiesDir" -}}
/etc/tributary/kafka
{{- end }}
{{- define "tributary.kafkaPropertiesFile" -}}
{{ include "tributary.kafkaPropertiesDir" . }}/kafka.properties
{{- end }}
{{- define "tributary.kafkaTlsDir" -}}
/etc/tributary/kafka-tls
{{- end }}
