{{/*
The labels every object carries (manifests/ sets the same through
kustomize's `labels`); pod templates carry only the selector labels.
*/}}
{{- define "monocsi.labels" -}}
app.kubernetes.io/part-of: monocsi
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a workload: include with (list . "node"). */}}
{{- define "monocsi.selectorLabels" -}}
app.kubernetes.io/name: monocsi
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "monocsi.namespace" -}}
{{ .Values.namespace.name }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "monocsi.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* The driver flags both roles share (only those set). */}}
{{- define "monocsi.nfsArgs" -}}
{{- with .Values.nfs.driverName }}
- --nfs-driver-name={{ . }}
{{- end }}
{{- with .Values.nfs.mountTimeout }}
- --nfs-mount-timeout={{ . }}
{{- end }}
{{- with .Values.nfs.defaultOnDelete }}
- --nfs-default-ondelete={{ . }}
{{- end }}
{{- end }}
