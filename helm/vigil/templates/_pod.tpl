{{/*
The volumes of vigil's pods, and where the vigil container mounts them: the files vigil.toml
names (config, issuers, Redis credentials, admin, HSM PINs), the data and tmp emptyDirs and
the extras. Shared by the Deployment, the archive StatefulSet and the backup CronJob, so
every vigil process of the release reads the same vigil.toml with the same files under it.
*/}}
{{- define "vigil.volumeMounts" -}}
{{- $v := .Values -}}
- name: config
  mountPath: {{ include "vigil.configDir" . }}
  readOnly: true
- name: data
  mountPath: {{ include "vigil.dataDir" . }}
- name: tmp
  mountPath: /tmp
{{- if $v.journal.existingClaim }}
- name: journal
  mountPath: {{ include "vigil.journalDir" . }}
  {{- with $v.journal.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- range $n, $i := $v.issuers }}
- name: issuer-{{ $n }}
  mountPath: {{ include "vigil.issuerDir" $i.name }}
  readOnly: true
{{- end }}
{{- if $v.feed.enabled }}
{{- range $n, $r := $v.feed.regions }}
{{- if $r.passwordSecret }}
- name: redis-password-{{ $n }}
  mountPath: {{ include "vigil.redisPasswordDir" $r.name }}
  readOnly: true
{{- end }}
{{- if $r.sentinelPasswordSecret }}
- name: sentinel-password-{{ $n }}
  mountPath: {{ include "vigil.sentinelPasswordDir" $r.name }}
  readOnly: true
{{- end }}
{{- if $r.caSecret }}
- name: redis-ca-{{ $n }}
  mountPath: {{ include "vigil.redisCaDir" $r.name }}
  readOnly: true
{{- end }}
{{- if $r.clientCertSecret }}
- name: redis-client-{{ $n }}
  mountPath: {{ include "vigil.redisClientDir" $r.name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- if $v.admin.enabled }}
- name: admin-token
  mountPath: {{ include "vigil.adminTokenDir" . }}
  readOnly: true
{{- if $v.admin.tls.existingSecret }}
- name: admin-tls
  mountPath: {{ include "vigil.adminTlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- if $v.hsm.enabled }}
{{- $n := 0 }}
{{- range $secret, $keys := include "vigil.hsmPinSecrets" . | fromJson }}
- name: hsm-pin-{{ $n }}
  mountPath: {{ include "vigil.hsmPinDir" $secret }}
  readOnly: true
{{- $n = add1 $n }}
{{- end }}
{{- if $v.hsm.socketVolume.enabled }}
- name: hsm-socket
  mountPath: {{ $v.hsm.socketVolume.mountPath }}
{{- end }}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{- toYaml . | nindent 12 }}
{{- end }}
{{- end -}}

{{- define "vigil.volumes" -}}
{{- $v := .Values -}}
{{- $fullname := include "vigil.fullname" . -}}
- name: config
  configMap:
    name: {{ $fullname }}
    defaultMode: 0444
- name: data
  emptyDir:
    {{- with $v.dataVolume.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ $v.dataVolume.sizeLimit }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- if $v.journal.existingClaim }}
- name: journal
  persistentVolumeClaim:
    claimName: {{ $v.journal.existingClaim }}
{{- end }}
{{- range $n, $i := $v.issuers }}
- name: issuer-{{ $n }}
  secret:
    secretName: {{ required (printf "issuers[%d].existingSecret: the Secret holding %s's certificates and key" $n $i.name) $i.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $i.certificateKey | default "ca.pem" }}
        path: ca.pem
      {{- with $i.responderCertificateKey }}
      - key: {{ . }}
        path: responder.pem
      {{- end }}
      {{- if not (and $v.hsm.enabled $i.hsm) }}
      - key: {{ $i.responderKeyKey | default "responder.key" }}
        path: responder.key
      {{- end }}
      {{- if and $v.crl.enabled $i.crlKeyKey }}
      - key: {{ $i.crlKeyKey }}
        path: ca.key
      {{- end }}
{{- end }}
{{- if $v.feed.enabled }}
{{- range $n, $r := $v.feed.regions }}
{{- with $r.passwordSecret }}
- name: redis-password-{{ $n }}
  secret:
    secretName: {{ required (printf "feed.regions[%s].passwordSecret.name" $r.name) .name }}
    defaultMode: 0440
    items:
      - key: {{ .key | default "password" }}
        path: password
{{- end }}
{{- with $r.sentinelPasswordSecret }}
- name: sentinel-password-{{ $n }}
  secret:
    secretName: {{ required (printf "feed.regions[%s].sentinelPasswordSecret.name" $r.name) .name }}
    defaultMode: 0440
    items:
      - key: {{ .key | default "password" }}
        path: password
{{- end }}
{{- with $r.caSecret }}
- name: redis-ca-{{ $n }}
  secret:
    secretName: {{ required (printf "feed.regions[%s].caSecret.name" $r.name) .name }}
    defaultMode: 0444
    items:
      - key: {{ .key | default "ca.crt" }}
        path: ca.pem
{{- end }}
{{- with $r.clientCertSecret }}
- name: redis-client-{{ $n }}
  secret:
    secretName: {{ required (printf "feed.regions[%s].clientCertSecret.name" $r.name) .name }}
    defaultMode: 0440
    items:
      - key: {{ .certificateKey | default "tls.crt" }}
        path: tls.crt
      - key: {{ .keyKey | default "tls.key" }}
        path: tls.key
{{- end }}
{{- end }}
{{- end }}
{{- if $v.admin.enabled }}
- name: admin-token
  secret:
    secretName: {{ required "admin.token.existingSecret: the Secret holding the admin bearer token" $v.admin.token.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.admin.token.key }}
        path: token
{{- with $v.admin.tls }}
{{- if .existingSecret }}
- name: admin-tls
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .certificateKey }}
        path: tls.crt
      - key: {{ .keyKey }}
        path: tls.key
      {{- with .clientCaKey }}
      - key: {{ . }}
        path: client-ca.crt
      {{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.hsm.enabled }}
{{- $n := 0 }}
{{- range $secret, $keys := include "vigil.hsmPinSecrets" . | fromJson }}
- name: hsm-pin-{{ $n }}
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
    items:
      {{- range $keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- $n = add1 $n }}
{{- end }}
{{- if $v.hsm.socketVolume.enabled }}
- name: hsm-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end }}
{{- with $v.extraVolumes }}
{{- toYaml . | nindent 8 }}
{{- end }}
{{- end -}}
