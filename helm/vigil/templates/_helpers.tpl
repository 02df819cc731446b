{{/* Names, labels and the fixed paths shared by the templates. */}}

{{- define "vigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vigil.fullname" -}}
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

{{/* The admin Service: "<fullname>-admin", within 63 characters. */}}
{{- define "vigil.adminName" -}}
{{- printf "%s-admin" (include "vigil.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "vigil.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vigil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vigil.labels" -}}
helm.sh/chart: {{ include "vigil.chart" . }}
{{ include "vigil.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vigil
{{- end -}}

{{- define "vigil.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vigil.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vigil.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Fixed paths inside the container. They match the Dockerfile: the config under /etc/vigil,
everything written under the volume /var/lib/vigil.
*/}}
{{- define "vigil.configDir" -}}/etc/vigil/config{{- end -}}
{{- define "vigil.configFile" -}}/etc/vigil/config/vigil.toml{{- end -}}
{{- define "vigil.dataDir" -}}/var/lib/vigil{{- end -}}
{{- define "vigil.journalDir" -}}/var/lib/vigil/journal{{- end -}}
{{- define "vigil.issuerDir" -}}/etc/vigil/issuers/{{ . }}{{- end -}}
{{- define "vigil.adminTokenDir" -}}/etc/vigil/secrets/admin-token{{- end -}}
{{- define "vigil.adminTlsDir" -}}/etc/vigil/secrets/admin-tls{{- end -}}
{{- define "vigil.redisPasswordDir" -}}/etc/vigil/secrets/redis/{{ . }}{{- end -}}
{{- define "vigil.sentinelPasswordDir" -}}/etc/vigil/secrets/redis-sentinel/{{ . }}{{- end -}}
{{- define "vigil.redisCaDir" -}}/etc/vigil/secrets/redis-ca/{{ . }}{{- end -}}
{{- define "vigil.redisClientDir" -}}/etc/vigil/secrets/redis-client/{{ . }}{{- end -}}
{{- define "vigil.hsmPinDir" -}}/etc/vigil/secrets/hsm-pin/{{ . }}{{- end -}}

{{/*
terminationGracePeriodSeconds: the preStop sleep, vigil's drain delay and shutdown timeout,
and a margin; an explicit value below that sum fails the render.
*/}}
{{- define "vigil.terminationGracePeriodSeconds" -}}
{{- $d := .Values.drain -}}
{{- $min := add $d.preStopSleepSeconds $d.delaySeconds $d.shutdownTimeoutSeconds $d.marginSeconds -}}
{{- if kindIs "invalid" $d.terminationGracePeriodSeconds -}}
{{- $min -}}
{{- else if lt (int64 $d.terminationGracePeriodSeconds) (int64 $min) -}}
{{- fail (printf "drain.terminationGracePeriodSeconds (%d) is below preStopSleepSeconds + delaySeconds + shutdownTimeoutSeconds + marginSeconds (%d): the kubelet would kill vigil mid-drain" (int64 $d.terminationGracePeriodSeconds) (int64 $min)) -}}
{{- else -}}
{{- int64 $d.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The PIN Secret of one hsm.keys entry: its own, else hsm.pin. */}}
{{- define "vigil.hsmPin" -}}
{{- $own := .key.pin | default (dict) -}}
{{- $secret := $own.existingSecret | default .root.Values.hsm.pin.existingSecret -}}
{{- $k := $own.key | default .root.Values.hsm.pin.key -}}
{{- $secret = required (printf "hsm.keys[%s]: set pin.existingSecret or hsm.pin.existingSecret (the Secret holding the user PIN)" .key.name) $secret -}}
{{- dict "secret" $secret "key" $k | toJson -}}
{{- end -}}

{{/* Every Secret holding HSM PINs, with the keys used from it: {"secret": ["key", ...]}. */}}
{{- define "vigil.hsmPinSecrets" -}}
{{- $out := dict -}}
{{- range .Values.hsm.keys -}}
{{- $p := include "vigil.hsmPin" (dict "root" $ "key" .) | fromJson -}}
{{- $keys := get $out $p.secret | default list -}}
{{- $_ := set $out $p.secret (append $keys $p.key | uniq) -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/*
The `helm test` pod and the retry proxy carry their own `app.kubernetes.io/name`, never
vigil's: the Service, the Deployment, the PDB and the NetworkPolicy select vigil's pods by
vigil.selectorLabels, and must not take these in.
*/}}
{{- define "vigil.testName" -}}
{{- printf "%s-test" (include "vigil.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{/* vigil.labels without the selector labels, for objects that select other pods. */}}
{{- define "vigil.baseLabels" -}}
helm.sh/chart: {{ include "vigil.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vigil
{{- end -}}

{{- define "vigil.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "vigil.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The retry proxy's Deployment, Service and ConfigMap: "<fullname>-retry-proxy". */}}
{{- define "vigil.retryProxyName" -}}
{{- printf "%s-retry-proxy" (include "vigil.fullname" . | trunc 51 | trimSuffix "-") -}}
{{- end -}}

{{- define "vigil.retryProxySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-retry-proxy" (include "vigil.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The headless Service the retry proxy resolves vigil's ready pods through. */}}
{{- define "vigil.podsName" -}}
{{- printf "%s-pods" (include "vigil.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{- define "vigil.retryProxyImage" -}}
{{- $i := .Values.retryProxy.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{/*
The archive role (archive.yaml): "<fullname>-archive" for its StatefulSet, Service and
claims, with its own `app.kubernetes.io/name`, so vigil's Service, PDB and NetworkPolicy do
not take its pod in. The backup CronJob: "<fullname>-backup".
*/}}
{{- define "vigil.archiveName" -}}
{{- printf "%s-archive" (include "vigil.fullname" . | trunc 50 | trimSuffix "-") -}}
{{- end -}}

{{- define "vigil.archiveSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-archive" (include "vigil.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vigil.backupName" -}}
{{- printf "%s-backup" (include "vigil.fullname" . | trunc 44 | trimSuffix "-") -}}
{{- end -}}

{{- define "vigil.backupSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-backup" (include "vigil.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vigil.archiveDir" -}}/var/lib/vigil-archive{{- end -}}
{{- define "vigil.backupDir" -}}/backups{{- end -}}

{{/* The Prometheus job of the archive role: archiveJob, else the chart's archive Service. */}}
{{- define "vigil.archiveJob" -}}
{{- if .Values.metrics.prometheusRule.archiveJob -}}
{{- .Values.metrics.prometheusRule.archiveJob -}}
{{- else if .Values.archive.enabled -}}
{{- include "vigil.archiveName" . -}}
{{- end -}}
{{- end -}}
