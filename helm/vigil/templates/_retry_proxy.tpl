{{/*
haproxy.cfg of the retry proxy.

An OCSP request is a query, GET or POST alike: sending it again to another pod is safe, so
both (and CRL GETs) are retried, at most `retryProxy.retries` times and each time on another
pod (`option redispatch 1`), after a refused connection, an empty response or
`timeouts.server` without an answer. `option http-buffer-request` holds the whole body
before the request goes out, so a POST can be sent again; a request is retried only if it
fits one buffer, so the buffer is twice the largest body forwarded, and a larger body is
refused here (413) as vigil would refuse it. The pods come from DNS: the headless Service
lists the ready pods, `server-template` keeps a slot for each pod the Deployment may have,
and the proxy's own checks on /readyz (every `check.interval`, out after `check.fall`) take a
hung pod out long before its readiness probe fails; `observe layer4` takes a pod out at its
first refused connection, and `leastconn` sends nothing new to a pod still holding an
unanswered request.
*/}}
{{- define "vigil.retryProxyConfig" -}}
{{- $v := .Values -}}
{{- $p := $v.retryProxy -}}
{{- $maxBody := int64 $p.maxBodyBytes -}}
{{- if eq $maxBody 0 -}}
{{- $maxBody = int64 (dig "limits" "max_request_bytes" 16384 $v.config) -}}
{{- end -}}
{{- $buf := mul $maxBody 2 -}}
{{- if lt $buf 16384 -}}{{- $buf = 16384 -}}{{- end -}}
{{- $servers := int64 $p.servers -}}
{{- if eq $servers 0 -}}
{{- $servers = add1 (ternary $v.autoscaling.maxReplicas $v.replicaCount $v.autoscaling.enabled) -}}
{{- end -}}
{{- $ipv6 := contains ":" $v.bindAddress -}}
{{- $fqdn := printf "%s.%s.svc.%s" (include "vigil.podsName" .) .Release.Namespace $p.clusterDomain -}}
global
  maxconn 4096
  tune.bufsize {{ $buf }}

resolvers kube
  parse-resolv-conf
  accepted_payload_size 8192
  resolve_retries 3
  timeout resolve 1s
  timeout retry 1s
  hold valid 5s
  hold nx 1s
  hold obsolete 1s

defaults
  mode http
  option httplog
  option log-separate-errors
  log stdout format raw local0 err
  timeout connect {{ $p.timeouts.connect }}
  timeout client {{ $p.timeouts.client }}
  timeout server {{ $p.timeouts.server }}
  timeout http-request {{ $p.timeouts.httpRequest }}
  timeout http-keep-alive 30s
  timeout check {{ $p.timeouts.check }}
  retries {{ int64 $p.retries }}
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
  option http-buffer-request

frontend ocsp
  bind {{ $v.bindAddress }}:{{ int64 $p.port }}{{ if $ipv6 }} v4v6{{ end }}
  http-request deny deny_status 413 if { req.body_size gt {{ $maxBody }} }
  default_backend vigil

# Probes and metrics of the proxy itself: /healthz while HAProxy runs, /readyz while a vigil
# pod is in service, /metrics HAProxy's Prometheus exporter.
frontend health
  bind {{ $v.bindAddress }}:{{ int64 $p.healthPort }}{{ if $ipv6 }} v4v6{{ end }}
  http-request use-service prometheus-exporter if { path /metrics }
  http-request return status 503 content-type text/plain string "no vigil pod in service" if { path /readyz } { nbsrv(vigil) lt 1 }
  http-request return status 200 content-type text/plain string "ok" if { path /healthz /readyz }
  http-request deny deny_status 404

backend vigil
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server check inter {{ $p.check.interval }} fall {{ int64 $p.check.fall }} rise {{ int64 $p.check.rise }} observe layer4 error-limit 1 on-error mark-down resolvers kube resolve-prefer {{ ternary "ipv6" "ipv4" $ipv6 }} init-addr none
  server-template pod 1-{{ $servers }} {{ $fqdn }}:{{ int64 $v.ports.http }}
{{- end -}}
