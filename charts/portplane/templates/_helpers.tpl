{{- define "portplane.name" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portplane.labels" -}}
app.kubernetes.io/name: portplane-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "portplane.selector" -}}
app.kubernetes.io/name: portplane-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
