#!/usr/bin/env bash
# A local active-active vigil cluster, as it runs in production, on loopback:
#
#   HAProxy 127.0.0.10  --(GET /readyz, inter 500ms fall 2 rise 2; GET and POST retried elsewhere, 3x)-->
#     region a (127.0.0.11): redis-server, p11-kit server (SoftHSM2 token hsm-a), replicas a1 a2
#     region b (127.0.0.12): redis-server, p11-kit server (SoftHSM2 token hsm-b), replicas b1 b2
#
# Every replica consumes the feed of both regions and signs through the HSM of its own region
# first, then the other. Both tokens hold the same responder key. The PKI (CA, delegated
# responder certificate for the HSM key, issued and revoked serials imported into the feed)
# is made here.
#
#   loadtest/cluster.sh up       start everything, write $STATE/cluster.env
#   loadtest/cluster.sh status   what runs, and each replica's /readyz
#   loadtest/cluster.sh down     stop everything `up` started, by PID
#
# Environment: VIGIL_CLUSTER_DIR (state dir, default loadtest/out/cluster), VIGIL_BIN (the
# vigil binary, default target/release/vigil, else target/debug/vigil), CLUSTER_GOOD,
# CLUSTER_REVOKED (serials issued / revoked at start; default 200 / 50), CLUSTER_FEED_MAXLEN
# (the replicas' feed.maxlen; default vigil's), CLUSTER_REPLICAS (the
# replicas to run, default "a1 a2 b1 b2"; loadtest/mass-revocation.sh runs "a1 b1").
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
STATE="${VIGIL_CLUSTER_DIR:-$root/loadtest/out/cluster}"
if [ -z "${VIGIL_BIN:-}" ]; then
  if [ -x "$root/target/release/vigil" ]; then VIGIL_BIN="$root/target/release/vigil"; else VIGIL_BIN="$root/target/debug/vigil"; fi
fi
GOOD="${CLUSTER_GOOD:-200}"
REVOKED="${CLUSTER_REVOKED:-50}"
REPLICAS="${CLUSTER_REPLICAS:-a1 a2 b1 b2}"
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
P11KIT_CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
LB_IP=127.0.0.10
declare -A REGION_IP=([a]=127.0.0.11 [b]=127.0.0.12)
TOKEN="cluster-admin-token-0123456789"

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

free_port() { # free_port IP
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# start NAME LOGFILE CMD...: runs CMD in its own session (process group = PID), records the PID.
start() {
  local name="$1" logf="$2"; shift 2
  setsid "$@" >"$logf" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}

wait_for_line() { # wait_for_line FILE PATTERN SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "timed out waiting for '$2' in $1: $(tail -5 "$1" 2>/dev/null)"
}

pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
      -subj "/CN=vigil cluster CA" -days 90 -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.p8.key
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out responder.key 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\nnoCheck=ignored\n' >responder.ext
    openssl req -new -key responder.key -subj "/CN=vigil cluster OCSP responder" -out responder.csr
    openssl x509 -req -in responder.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile responder.ext -out responder.pem 2>/dev/null
    # The CA database: GOOD issued serials (1000..), REVOKED revoked ones (2000..).
    : >index.txt
    local i exp
    exp="$(date -u -d '+60 days' +%y%m%d%H%M%SZ)"
    for ((i = 0; i < GOOD; i++)); do
      printf 'V\t%s\t\t%X\tunknown\t/CN=good-%d\n' "$exp" $((0x1000 + i)) "$i" >>index.txt
    done
    local rev
    rev="$(date -u -d '-1 hour' +%y%m%d%H%M%SZ)"
    for ((i = 0; i < REVOKED; i++)); do
      printf 'R\t%s\t%s,keyCompromise\t%X\tunknown\t/CN=revoked-%d\n' "$exp" "$rev" $((0x2000 + i)) "$i" >>index.txt
    done
  )
}

hsms() {
  local d="$STATE/hsm"
  mkdir -p "$d/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$d/tokens" >"$d/softhsm2.conf"
  printf '1234\n' >"$d/pin"
  chmod 600 "$d/pin"
  local r
  for r in a b; do
    SOFTHSM2_CONF="$d/softhsm2.conf" softhsm2-util --init-token --free --label "hsm-$r" --pin 1234 --so-pin 12345678 >/dev/null
    SOFTHSM2_CONF="$d/softhsm2.conf" softhsm2-util --import "$STATE/pki/responder.key" --token "hsm-$r" \
      --label ocsp --id 01 --pin 1234 >/dev/null
  done
}

start_hsm() { # start_hsm REGION
  local r="$1" sock="$STATE/hsm/hsm-$1.sock"
  rm -f "$sock"
  SOFTHSM2_CONF="$STATE/hsm/softhsm2.conf" start "hsm-$r" "$STATE/logs/hsm-$r.log" \
    p11-kit server -f --provider "$SOFTHSM_MODULE" -n "$sock" "pkcs11:token=hsm-$r"
  local i
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.1; done
  die "p11-kit server for hsm-$r did not start"
}

start_redis() { # start_redis REGION
  local r="$1"
  mkdir -p "$STATE/redis-$r"
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  local port_var="REDIS_${r^^}_PORT"
  start "redis-$r" "$STATE/logs/redis-$r.log" redis-server --bind "${REGION_IP[$r]}" --port "${!port_var}" \
    --dir "$STATE/redis-$r" --save "" --appendonly yes --appendfsync everysec
  local i
  for ((i = 0; i < 100; i++)); do
    redis-cli -h "${REGION_IP[$r]}" -p "${!port_var}" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "redis-$r did not start"
}

# start_redis_from REGION RDB: the region's Redis started again from an RDB file (a rollback:
# a Redis restored from an older snapshot), then AOF turned back on, rewritten from that data.
start_redis_from() {
  local r="$1" rdb="$2"
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  local port_var="REDIS_${r^^}_PORT"
  rm -rf "$STATE/redis-$r"
  mkdir -p "$STATE/redis-$r"
  cp "$rdb" "$STATE/redis-$r/dump.rdb"
  start "redis-$r" "$STATE/logs/redis-$r.log" redis-server --bind "${REGION_IP[$r]}" --port "${!port_var}" \
    --dir "$STATE/redis-$r" --save "" --appendonly no
  local i
  for ((i = 0; i < 100; i++)); do
    if redis-cli -h "${REGION_IP[$r]}" -p "${!port_var}" ping 2>/dev/null | grep -q PONG; then
      redis-cli -h "${REGION_IP[$r]}" -p "${!port_var}" config set appendonly yes >/dev/null
      return 0
    fi
    sleep 0.1
  done
  die "redis-$r did not start from $rdb"
}

replica_config() { # replica_config NAME REGION
  local n="$1" r="$2" other
  [ "$r" = a ] && other=b || other=a
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  cat >"$STATE/$n.toml" <<EOF
data_dir = "$STATE/data-$n"

[server]
drain_delay = "2s"
shutdown_timeout = "5s"

[ocsp]
validity = "1d"

[status]
origin = "$n"

[feed]
quorum = 1
connect_timeout = "300ms"
write_timeout = "1s"
reconnect_min = "100ms"
reconnect_max = "1s"
heartbeat_interval = "500ms"
max_staleness = "30s"
repair_interval = "1s"
checkpoint_interval = "5s"
$([ -n "${CLUSTER_FEED_MAXLEN:-}" ] && echo "maxlen = $CLUSTER_FEED_MAXLEN")

[[region]]
name = "$r"
redis = "redis://${REGION_IP[$r]}:$(eval echo "\$REDIS_${r^^}_PORT")"

[[region]]
name = "$other"
redis = "redis://${REGION_IP[$other]}:$(eval echo "\$REDIS_${other^^}_PORT")"

[crl]
region = "$r"
publish_delay = "1s"
refresh = "1s"
redis_timeout = "500ms"

[admin]
listen = "${REGION_IP[$r]}:$(eval echo "\$ADMIN_${n^^}_PORT")"
token_file = "$STATE/admin-token"

[hsm_pool]
probe_interval = "1s"
reconnect_backoff_min = "200ms"
reconnect_backoff_max = "2s"
session_wait = "100ms"
sign_timeout = "100ms"

[[hsm]]
name = "hsm-$r"
module = "$P11KIT_CLIENT"
module_env = { P11_KIT_SERVER_ADDRESS = "unix:path=$STATE/hsm/hsm-$r.sock" }
token_label = "hsm-$r"
key_label = "ocsp"
pin_file = "$STATE/hsm/pin"

[[hsm]]
name = "hsm-$other"
module = "$P11KIT_CLIENT"
module_env = { P11_KIT_SERVER_ADDRESS = "unix:path=$STATE/hsm/hsm-$other.sock" }
token_label = "hsm-$other"
key_label = "ocsp"
pin_file = "$STATE/hsm/pin"

[[issuer]]
name = "cluster"
certificate = "$STATE/pki/ca.pem"
responder_certificate = "$STATE/pki/responder.pem"
signer = { hsm = ["hsm-$r", "hsm-$other"] }
crl_key = "$STATE/pki/ca.p8.key"
EOF
}

start_replica() { # start_replica NAME   (a1 a2 b1 b2)
  local n="$1" r="${1:0:1}"
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  local port_var="REPLICA_${n^^}_PORT"
  : >"$STATE/logs/$n.log"
  VIGIL_LISTEN="${REGION_IP[$r]}:${!port_var}" VIGIL_LOG="${VIGIL_LOG:-warn}" \
    start "$n" "$STATE/logs/$n.log" "$VIGIL_BIN" --config "$STATE/$n.toml" serve
  wait_for_line "$STATE/logs/$n.log" "vigil listening on" 60
}

haproxy_config() {
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  # An OCSP request is a query, GET or POST alike: sending it again to another replica is
  # safe, so both are retried (at most `retries`, each elsewhere) after a refused connection,
  # an empty response or a response timeout. `option http-buffer-request` holds the whole POST
  # body before the request goes out (`openssl ocsp` writes head and body separately; without
  # it a POST whose head went out alone is not retried: 504). A request is retried only if it
  # fits one buffer, so the buffer is twice vigil's `limits.max_request_bytes` (16 KiB) and a
  # larger body is refused here. `timeout server` is what a hung replica costs one request
  # before its retry (300 ms: ~60x a replica's p99 of 3-5 ms, and above the 200 ms a replica
  # may spend on a hung HSM and then the next: `hsm_pool.sign_timeout` 100 ms, in the replica
  # config above); checks every 500 ms with a 300 ms timeout, fall 2,
  # take a hung replica out in about 1-1.5 s, and `leastconn` sends nothing new to a replica
  # that still holds an unanswered request meanwhile. `observe layer4 error-limit 1 on-error
  # mark-down` takes a replica out at its first refused connection, without waiting for two
  # checks: with two replicas killed at once (a lease holder and its region's other replica in
  # the publisher-failover drill), `leastconn` otherwise sends the retries of one request from
  # one dead replica to the other, and the request fails with 503. Reasons in docs/DEPLOY.md.
  cat >"$STATE/haproxy.cfg" <<EOF
global
  maxconn 4096
  tune.bufsize 32768
  stats socket $STATE/haproxy.sock mode 600 level admin

defaults
  mode http
  option httplog
  option log-separate-errors
  log stdout format raw local0 err
  timeout connect 500ms
  timeout client 30s
  timeout server 300ms
  timeout http-request 10s
  timeout http-keep-alive 30s
  timeout check 300ms
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
  option http-buffer-request

frontend ocsp
  bind $LB_IP:$LB_PORT
  http-request deny deny_status 413 if { req.body_size gt 16384 }
  default_backend vigil

backend vigil
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server check inter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
EOF
  local n port_var
  for n in $REPLICAS; do
    port_var="REPLICA_${n^^}_PORT"
    echo "  server $n ${REGION_IP[${n:0:1}]}:${!port_var}" >>"$STATE/haproxy.cfg"
  done
}

up() {
  [ -x "$VIGIL_BIN" ] || die "no vigil binary at $VIGIL_BIN (cargo build --release, or set VIGIL_BIN)"
  if [ -d "$STATE/pids" ] && ls "$STATE/pids"/* >/dev/null 2>&1; then
    die "$STATE holds a running cluster; run '$0 down' first"
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE/pids" "$STATE/logs"
  printf '%s\n' "$TOKEN" >"$STATE/admin-token"
  local lb_port
  lb_port="$(free_port $LB_IP)"
  {
    echo "STATE=$STATE"
    echo "VIGIL_BIN=$VIGIL_BIN"
    echo "LB_PORT=$lb_port"
    echo "LB_URL=http://$LB_IP:$lb_port"
    echo "ADMIN_TOKEN=$TOKEN"
    echo "GOOD=$GOOD"
    echo "REVOKED=$REVOKED"
    local r n
    local p
    for r in a b; do
      p="$(free_port "${REGION_IP[$r]}")"
      echo "REDIS_${r^^}_PORT=$p"
      echo "REDIS_${r^^}_URL=redis://${REGION_IP[$r]}:$p"
      for n in 1 2; do
        p="$(free_port "${REGION_IP[$r]}")"
        echo "REPLICA_${r^^}${n}_PORT=$p"
        echo "REPLICA_${r^^}${n}_URL=http://${REGION_IP[$r]}:$p"
        p="$(free_port "${REGION_IP[$r]}")"
        echo "ADMIN_${r^^}${n}_PORT=$p"
        echo "ADMIN_${r^^}${n}_URL=http://${REGION_IP[$r]}:$p"
      done
    done
  } >"$STATE/cluster.env"
  log "PKI ($GOOD issued, $REVOKED revoked serials)"
  pki
  log "SoftHSM2 tokens hsm-a, hsm-b (same responder key)"
  hsms
  local r n
  for r in a b; do
    start_redis "$r"
    start_hsm "$r"
  done
  for n in $REPLICAS; do replica_config "$n" "${n:0:1}"; done
  log "importing the CA database into the feed"
  "$VIGIL_BIN" --config "$STATE/a1.toml" import --openssl-index "$STATE/pki/index.txt" --issuer cluster >"$STATE/logs/import.log" 2>&1 ||
    die "import failed: $(cat "$STATE/logs/import.log")"
  for n in $REPLICAS; do start_replica "$n"; done
  haproxy_config
  start haproxy "$STATE/logs/haproxy.log" haproxy -db -f "$STATE/haproxy.cfg"
  # Ready when HAProxy answers /readyz through a replica.
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "http://$LB_IP:$lb_port/readyz" 2>/dev/null && break
    sleep 0.2
  done
  curl -fsS -o /dev/null "http://$LB_IP:$lb_port/readyz" || die "HAProxy does not answer /readyz"
  log "up: load balancer http://$LB_IP:$lb_port/ (state in $STATE/cluster.env)"
  echo "$STATE/cluster.env"
}

status() {
  [ -f "$STATE/cluster.env" ] || { echo "no cluster in $STATE"; return 1; }
  # shellcheck disable=SC1090
  . "$STATE/cluster.env"
  local f n pid
  for f in "$STATE"/pids/*; do
    [ -e "$f" ] || continue
    n="$(basename "$f")"
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
      local st
      st="$(ps -o stat= -p "$pid" | tr -d ' ')"
      echo "$n pid $pid running ($st)"
    else
      echo "$n pid $pid NOT running"
    fi
  done
  for n in A1 A2 B1 B2; do
    local url_var="REPLICA_${n}_URL"
    echo "replica ${n,,} ${!url_var}/readyz: $(curl -s -m 2 "${!url_var}/readyz" || echo unreachable)"
  done
  echo "load balancer $LB_URL/readyz: $(curl -s -m 2 "$LB_URL/readyz" || echo unreachable)"
}

down() {
  [ -d "$STATE/pids" ] || { log "nothing to stop in $STATE"; return 0; }
  local f pid
  for f in "$STATE"/pids/*; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    # Each process runs in its own session: signal its group (p11-kit forks per connection).
    kill -CONT -- "-$pid" 2>/dev/null || true
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  sleep 1
  for f in "$STATE"/pids/*; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$f"
  done
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  # Internal, for drills: restart one component under the same config.
  start-replica) start_replica "$2" ;;
  start-hsm) start_hsm "$2" ;;
  start-redis) start_redis "$2" ;;
  start-redis-from) start_redis_from "$2" "$3" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
