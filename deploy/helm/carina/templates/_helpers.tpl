{{/* Names, labels and the small pieces every template shares. */}}

{{- define "carina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "carina.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The six services, in start-up order of the data flow. */}}
{{- define "carina.services" -}}
envmgr scheduler provisioner policy gateway callback
{{- end -}}

{{/* NATS users: the six services and the operator (libs/common/natsauth.py). */}}
{{- define "carina.natsUsers" -}}
envmgr scheduler provisioner policy gateway callback operator
{{- end -}}

{{- define "carina.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "carina.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: carina
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "envmgr"). */}}
{{- define "carina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "carina.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "carina.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "carina.secretName" -}}
{{- if .Values.secrets.existingSecret.enabled -}}
{{- .Values.secrets.existingSecret.name -}}
{{- else -}}
{{- printf "%s-secrets" (include "carina.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "carina.natsSecretName" -}}
{{- if .Values.nats.auth.existingSecret.enabled -}}
{{- .Values.nats.auth.existingSecret.name -}}
{{- else -}}
{{- printf "%s-nats-auth" (include "carina.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Where CARINA_MONGODB_URL comes from: "configmap", "existing" or "chart" (the chart's Secret). */}}
{{- define "carina.mongodbSource" -}}
{{- if .Values.mongodb.existingSecret.enabled -}}existing
{{- else if .Values.mongodb.urlWithCredentials -}}chart
{{- else -}}configmap
{{- end -}}
{{- end -}}

{{- define "carina.natsUrl" -}}
{{- if .Values.nats.bundled.enabled -}}
{{- printf "nats://%s-nats:4222" (include "carina.fullname" .) -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/*
A secret value: the one given in values, else the one already stored in the cluster (so an upgrade keeps it),
else 32 random characters. Call with (dict "root" $ "secret" NAME "key" KEY "value" VALUE).
*/}}
{{- define "carina.secretValue" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A settings map as CARINA_* environment entries: (dict "prefix" "CARINA_ENVMGR_" "settings" MAP). */}}
{{- define "carina.settingsEnv" -}}
{{- range $key, $value := .settings }}
{{ printf "%s%s" $.prefix ($key | snakecase | upper) }}: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ $value | toJson | quote }}{{ end }}
{{- end }}
{{- end -}}

{{/* Pod anti-affinity spreading the replicas of one component over nodes. */}}
{{- define "carina.antiAffinity" -}}
{{- $labels := include "carina.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels: {{- toYaml $labels | nindent 10 }}
{{- else if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {{- toYaml $labels | nindent 12 }}
{{- end }}
{{- end -}}

{{/* Refuse combinations the schema cannot express, with a message naming the values to fix. */}}
{{- define "carina.validate" -}}
{{- if contains "@" .Values.mongodb.url -}}
{{- fail "mongodb.url carries credentials and would land in a ConfigMap: put the URL in a Secret (mongodb.existingSecret) or in mongodb.urlWithCredentials" -}}
{{- end -}}
{{- if and .Values.nats.bundled.enabled (gt (int .Values.common.settings.natsReplicas) (int .Values.nats.bundled.replicas)) -}}
{{- fail (printf "common.settings.natsReplicas (%v) exceeds nats.bundled.replicas (%v): JetStream cannot place the stream replicas" .Values.common.settings.natsReplicas .Values.nats.bundled.replicas) -}}
{{- end -}}
{{- range $svc := include "carina.services" . | splitList " " -}}
{{- $cfg := index $.Values $svc -}}
{{- if and $cfg.autoscaling.enabled (gt (int $cfg.autoscaling.minReplicas) (int $cfg.autoscaling.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%v) is greater than maxReplicas (%v)" $svc $cfg.autoscaling.minReplicas $cfg.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
