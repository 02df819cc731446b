{{/*
vigil.toml, rendered from values. Scalars are written by vigil.toml.value: strings through
toJson (a JSON string is a valid TOML basic string), numbers as integers when they are whole
(Helm reads every YAML number as a float64: printed as is, 268435456 would come out as
2.68435456e+08), maps as inline tables.
*/}}

{{- define "vigil.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{- define "vigil.toml.value" -}}
{{- if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- else if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "vigil.toml.value" $e }}{{ end -}}]
{{- else if kindIs "map" . -}}
{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "vigil.toml.key" $k }} = {{ include "vigil.toml.value" (get $ $k) }}{{ end }} }
{{- else -}}
{{- fail (printf "cannot write %v (%s) into vigil.toml" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* `key = value` lines of a map, one per line, each preceded by a newline; nulls skipped. */}}
{{- define "vigil.toml.pairs" -}}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{ include "vigil.toml.key" $k }} = {{ include "vigil.toml.value" $v }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "vigil.listen" -}}
{{- $host := .host -}}
{{- if contains ":" $host -}}
{{- $host = printf "[%s]" $host -}}
{{- end -}}
{{- printf "%s:%d" $host (int64 .port) -}}
{{- end -}}

{{- define "vigil.config" -}}
{{- $v := .Values -}}
# vigil.toml, rendered by the {{ include "vigil.chart" . }} chart for release {{ .Release.Name }}.
# Every key is described in docs/CONFIG.md.
data_dir = {{ include "vigil.dataDir" . | toJson }}

[server]
listen = {{ include "vigil.listen" (dict "host" $v.bindAddress "port" $v.ports.http) | toJson }}
drain_delay = {{ printf "%ds" (int64 $v.drain.delaySeconds) | toJson }}
shutdown_timeout = {{ printf "%ds" (int64 $v.drain.shutdownTimeoutSeconds) | toJson }}
{{- include "vigil.toml.pairs" $v.config.server }}
{{- with $v.config.limits }}

[limits]
{{- include "vigil.toml.pairs" . }}
{{- end }}
{{- with $v.config.ocsp }}

[ocsp]
{{- include "vigil.toml.pairs" . }}
{{- end }}

[status]
origin = {{ toJson $v.region }}
{{- if $v.journal.existingClaim }}
journal = {{ printf "%s/journal.vj" (include "vigil.journalDir" .) | toJson }}
{{- end }}
{{- include "vigil.toml.pairs" $v.config.status }}
{{- with $v.config.log }}

[log]
{{- include "vigil.toml.pairs" . }}
{{- end }}
{{- if $v.feed.enabled }}

[feed]
{{- include "vigil.toml.pairs" $v.feed.settings }}
{{- range $r := required "feed.regions: list every region's Redis when feed.enabled" $v.feed.regions }}

[[region]]
name = {{ toJson $r.name }}
{{- if $r.url }}
redis = {{ toJson $r.url }}
{{- end }}
{{- if $r.sentinels }}
sentinels = {{ include "vigil.toml.value" $r.sentinels }}
service = {{ required (printf "feed.regions[%s].service: the Sentinel master group name, required with sentinels" $r.name) $r.service | toJson }}
{{- end }}
{{- with $r.username }}
username = {{ toJson . }}
{{- end }}
{{- if $r.passwordSecret }}
password_file = {{ printf "%s/password" (include "vigil.redisPasswordDir" $r.name) | toJson }}
{{- end }}
{{- if and (or $r.sentinelUsername $r.sentinelPasswordSecret) (not $r.sentinels) }}
{{- fail (printf "feed.regions[%s].sentinelUsername, sentinelPasswordSecret: the Sentinels' own credentials, only with sentinels" $r.name) }}
{{- end }}
{{- with $r.sentinelUsername }}
sentinel_username = {{ toJson . }}
{{- end }}
{{- if $r.sentinelPasswordSecret }}
sentinel_password_file = {{ printf "%s/password" (include "vigil.sentinelPasswordDir" $r.name) | toJson }}
{{- end }}
{{- if $r.caSecret }}
ca_file = {{ printf "%s/ca.pem" (include "vigil.redisCaDir" $r.name) | toJson }}
{{- end }}
{{- if $r.clientCertSecret }}
client_certificate = {{ printf "%s/tls.crt" (include "vigil.redisClientDir" $r.name) | toJson }}
client_key = {{ printf "%s/tls.key" (include "vigil.redisClientDir" $r.name) | toJson }}
{{- end }}
{{- include "vigil.toml.pairs" ($r.settings | default (dict)) }}
{{- end }}
{{- end }}
{{- if $v.admin.enabled }}

[admin]
listen = {{ include "vigil.listen" (dict "host" $v.bindAddress "port" $v.ports.admin) | toJson }}
token_file = {{ printf "%s/token" (include "vigil.adminTokenDir" .) | toJson }}
{{- if $v.admin.tls.existingSecret }}
tls_certificate = {{ printf "%s/tls.crt" (include "vigil.adminTlsDir" .) | toJson }}
tls_key = {{ printf "%s/tls.key" (include "vigil.adminTlsDir" .) | toJson }}
{{- if $v.admin.tls.clientCaKey }}
client_ca = {{ printf "%s/client-ca.crt" (include "vigil.adminTlsDir" .) | toJson }}
{{- end }}
{{- end }}
{{- include "vigil.toml.pairs" $v.admin.settings }}
{{- end }}
{{- if $v.hsm.enabled }}
{{- with $v.hsm.pool }}

[hsm_pool]
{{- include "vigil.toml.pairs" . }}
{{- end }}
{{- range $k := $v.hsm.keys }}
{{- $pin := include "vigil.hsmPin" (dict "root" $ "key" $k) | fromJson }}

[[hsm]]
name = {{ toJson $k.name }}
module = {{ $k.module | default $v.hsm.module | toJson }}
module_env = {{ merge (dict) ($k.moduleEnv | default (dict)) $v.hsm.moduleEnv | include "vigil.toml.value" }}
{{- if not (kindIs "invalid" $k.slot) }}
slot = {{ int64 $k.slot }}
{{- else }}
token_label = {{ required (printf "hsm.keys[%s]: set tokenLabel or slot" $k.name) $k.tokenLabel | toJson }}
{{- end }}
{{- if not (or $k.keyLabel $k.keyId) }}
{{- fail (printf "hsm.keys[%s]: set keyLabel, keyId, or both" $k.name) }}
{{- end }}
{{- with $k.keyLabel }}
key_label = {{ toJson . }}
{{- end }}
{{- with $k.keyId }}
key_id = {{ toJson . }}
{{- end }}
pin_file = {{ printf "%s/%s" (include "vigil.hsmPinDir" $pin.secret) $pin.key | toJson }}
sessions = {{ $k.sessions | default $v.hsm.sessions | int64 }}
{{- end }}
{{- end }}
{{- if $v.crl.enabled }}

[crl]
{{- include "vigil.toml.pairs" $v.crl.settings }}
{{- end }}
{{- range $i := required "issuers: list at least one issuing CA" $v.issuers }}

[[issuer]]
name = {{ toJson $i.name }}
certificate = {{ printf "%s/ca.pem" (include "vigil.issuerDir" $i.name) | toJson }}
{{- if ne ($i.responderCertificateKey | default "") "" }}
responder_certificate = {{ printf "%s/responder.pem" (include "vigil.issuerDir" $i.name) | toJson }}
{{- end }}
{{- if and $v.hsm.enabled $i.hsm }}
signer = { hsm = {{ include "vigil.toml.value" $i.hsm }} }
{{- else }}
responder_key = {{ printf "%s/responder.key" (include "vigil.issuerDir" $i.name) | toJson }}
{{- end }}
{{- with $i.unissued }}
unissued = {{ toJson . }}
{{- end }}
{{- if $i.allowHold }}
allow_hold = true
{{- end }}
{{- if and $i.crlKeyKey $i.crlSigner }}
{{- fail (printf "issuers[%s]: set crlKeyKey or crlSigner, not both (crl_key, crl_signer)" $i.name) }}
{{- end }}
{{- if and $v.crl.enabled $i.crlSigner }}
{{- if not $v.hsm.enabled }}
{{- fail (printf "issuers[%s].crlSigner: set hsm.enabled (the CA key is in hsm.keys entries)" $i.name) }}
{{- end }}
crl_signer = { hsm = {{ include "vigil.toml.value" $i.crlSigner.hsm }} }
{{- else if and $v.crl.enabled $i.crlKeyKey }}
crl_key = {{ printf "%s/ca.key" (include "vigil.issuerDir" $i.name) | toJson }}
{{- end }}
{{- end }}
{{- with $v.config.extraToml }}
{{- if not (regexMatch "^\\s*(#[^\\n]*\\n\\s*)*\\[" .) }}
{{- fail "config.extraToml: start it with a [table] header, or its keys would land in the last [[issuer]]" }}
{{- end }}

{{ . | trim }}
{{- end }}
{{ end -}}
