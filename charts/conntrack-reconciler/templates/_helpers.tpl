{{/* Object name: the release name when it contains the chart name (install the release as
"conntrack-reconciler" to get the names `kubectl apply -k manifests/` uses). */}}
{{- define "conntrack-reconciler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels of manifests/base: the selector stays the one kustomize installs, so either
install can replace the other without a new (immutable) DaemonSet selector. */}}
{{- define "conntrack-reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
{{- end -}}

{{- define "conntrack-reconciler.labels" -}}
{{ include "conntrack-reconciler.selectorLabels" . }}
app.kubernetes.io/part-of: conntrack-reconciler
{{- end -}}

{{/* repository:tag, or repository@digest when a digest pins it (as kustomize's `digest:`). */}}
{{- define "conntrack-reconciler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* One CONNTRACK_RECONCILER_* variable per agent value that is set (null and false leave the
agent's default), in a stable order. Lists join with commas, as the flags take them. */}}
{{- define "conntrack-reconciler.agentEnv" -}}
{{- $flags := dict
  "dryRun" "DRY_RUN"
  "maxDeletesPerPass" "MAX_DELETES_PER_PASS"
  "family" "FAMILY"
  "resyncInterval" "RESYNC_INTERVAL"
  "noEvents" "NO_EVENTS"
  "eventDeletesPerSecond" "EVENT_DELETES_PER_SECOND"
  "tombstoneTtl" "TOMBSTONE_TTL"
  "debounce" "DEBOUNCE"
  "maxDelay" "MAX_DELAY"
  "followUps" "FOLLOW_UPS"
  "watchIdleTimeout" "WATCH_IDLE_TIMEOUT"
  "watchStaleAfter" "WATCH_STALE_AFTER"
  "unseenBackendGrace" "UNSEEN_BACKEND_GRACE"
  "nodeportAddresses" "NODEPORT_ADDRESSES"
  "zone" "ZONE" -}}
{{- range $key, $env := $flags -}}
{{- $value := index $.Values.agent $key -}}
{{- if kindIs "slice" $value -}}{{- $value = join "," $value -}}{{- end -}}
{{- if kindIs "float64" $value -}}{{- $value = int64 $value -}}{{- end -}}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") (ne (toString $value) "false") }}
- name: CONNTRACK_RECONCILER_{{ $env }}
  value: {{ toString $value | quote }}
{{- end -}}
{{- end -}}
{{- end -}}
