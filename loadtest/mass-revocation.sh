#!/usr/bin/env bash
# Mass revocation: MASS_N (default 1,000,000) revocations written with `vigil import` to the
# two-region feed of loadtest/cluster.sh (one replica per region, a1 and b1, behind HAProxy)
# while wrk asks the load balancer for one cached OCSP response. Reports, from one run:
#
#   write      wall time of `vigil import` (every batch acknowledged), and its peak RSS
#   complete   per replica, seconds after the last acknowledgement until its view holds every
#              certificate (vigil_status_view_certificates) and a sample of SAMPLE serials,
#              the last one written included, answers `revoked` (openssl ocsp, direct)
#   crl        per replica, seconds after the last acknowledgement until the CRL it serves
#              lists every revoked certificate (DER entries counted; checked once with
#              `openssl crl -text` at the end)
#   p99        wrk p99 for the cached response before the write (BEFORE_SECS) and from the
#              start of the write until every replica is complete, at the same offered load
#
#   cargo build --release && loadtest/mass-revocation.sh
#
# Environment: MASS_N, SAMPLE (20), BEFORE_SECS (10), CONNS (8), WRK_DELAY_MS (1), TIMEOUT
# (seconds to wait for completeness, 300), VIGIL_BIN, VIGIL_CLUSTER_DIR (as cluster.sh),
# PERF (set: perf record -a -g over the write), REGIONS_NICE (0): niceness of both regions'
# redis-servers and of the import, a stand-in on one machine for the hosts of their own they
# have when deployed (the replicas then compete for CPU with what shares their host in
# production: their own feed reading, HAProxy and the clients).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
N="${MASS_N:-1000000}"
SAMPLE="${SAMPLE:-20}"
BEFORE_SECS="${BEFORE_SECS:-10}"
CONNS="${CONNS:-8}"
DELAY="${WRK_DELAY_MS:-1}"
TIMEOUT="${TIMEOUT:-300}"
export CLUSTER_REPLICAS="a1 b1"
for c in wrk openssl curl python3 redis-cli; do
  command -v "$c" >/dev/null || { echo "mass-revocation: '$c' is required" >&2; exit 1; }
done
log() { echo "mass-revocation: $*" >&2; }
now() { date +%s.%N; }

env_file="$("$here/cluster.sh" up)"
trap '"$here/cluster.sh" down' EXIT
# shellcheck disable=SC1090
. "$env_file"
REGIONS_NICE="${REGIONS_NICE:-0}"
if ((REGIONS_NICE != 0)); then
  for r in a b; do # every thread of the server and its AOF children (one process group each)
    renice -n "$REGIONS_NICE" -g "$(cat "$STATE/pids/redis-$r")" >/dev/null
  done
  log "regions' redis-servers and the import at nice $REGIONS_NICE"
fi
work="$STATE/mass"
mkdir -p "$work"
base=$((GOOD + REVOKED))

# The index: N revoked certificates, serials 0x10000000.. (apart from the cluster's own).
python3 - "$N" "$work/index.txt" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write("R\t300101000000Z\t250101000000Z,keyCompromise\t%X\tunknown\t/CN=mass-%d\n" % (0x10000000 + i, i))
PY

# The cached request: a good certificate of the cluster, asked through the load balancer.
openssl ocsp -issuer "$STATE/pki/ca.pem" -serial 0x1000 -no_nonce -reqout "$work/req.der" >/dev/null 2>&1
for _ in 1 2 3 4; do
  curl -fsS -o /dev/null --data-binary @"$work/req.der" -H 'Content-Type: application/ocsp-request' "$LB_URL/"
done
export WRK_LUA_DIR="$here/wrk" WRK_BODY="$work/req.der" WRK_DELAY_MS="$DELAY"
wrk_json() { sed -n 's/^WRKJSON //p' "$1"; }

log "cached OCSP before the write (${BEFORE_SECS}s, $CONNS connections, ${DELAY} ms pacing)"
wrk -t1 -c"$CONNS" -d"${BEFORE_SECS}s" -s "$here/wrk/fixed.lua" "$LB_URL/" >"$work/wrk-before.out" 2>&1

log "writing $N revocations to regions a and b"
wrk -t1 -c"$CONNS" -d600s -s "$here/wrk/fixed.lua" "$LB_URL/" >"$work/wrk-during.out" 2>&1 &
wrk_pid=$!
redis_hostport() { local u="${1#redis://}"; echo "${u%%/*}"; }
for r in A B; do
  u="REDIS_${r}_URL"; hp="$(redis_hostport "${!u}")"
  redis-cli -h "${hp%:*}" -p "${hp##*:}" config resetstat >/dev/null
done
if [ -n "${PERF:-}" ]; then
  perf record -a -g -F 499 -o "$work/perf.data" >/dev/null 2>&1 &
  perf_pid=$!
fi
t0="$(now)"
nice -n "$REGIONS_NICE" /usr/bin/time -v "$VIGIL_BIN" --config "$STATE/a1.toml" import --openssl-index "$work/index.txt" \
  --issuer cluster >"$work/import.out" 2>"$work/import.time"
t_ack="$(now)"
write_s="$(python3 -c "print(f'{$t_ack - $t0:.2f}')")"
[ -n "${perf_pid:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; log "perf data in $work/perf.data"; }
for r in A B; do # Redis time inside the merge script and the replicas' reads, during the write
  u="REDIS_${r}_URL"; hp="$(redis_hostport "${!u}")"
  redis-cli -h "${hp%:*}" -p "${hp##*:}" info commandstats |
    sed -n 's/^cmdstat_\(evalsha\|xread\|xadd\|hscan\|xrange\|xinfo\):calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2 \3/p' |
    while read -r cmd calls usec; do log "region ${r,,}: $cmd $calls calls, $(python3 -c "print(f'{$usec/1e6:.2f}')") s in Redis"; done
done
rss_kb="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/import.time")"
log "written in ${write_s}s ($(cat "$work/import.out"))"

view_count() { # view_count URL
  curl -s -m 5 "$1/metrics" | sed -n 's/^vigil_status_view_certificates \([0-9.e+]*\)$/\1/p' | head -n1
}
sample_revoked() { # sample_revoked URL: every sampled serial answers revoked
  local url="$1" i s
  for ((i = 0; i < SAMPLE; i++)); do
    if ((i == 0)); then s=$((0x10000000 + N - 1)); else s=$((0x10000000 + (RANDOM * 32768 + RANDOM) % N)); fi
    openssl ocsp -issuer "$STATE/pki/ca.pem" -serial "$s" -url "$url/" -CAfile "$STATE/pki/ca.pem" -no_nonce 2>/dev/null |
      grep -q ": revoked" || return 1
  done
}
crl_count() { # crl_count URL: entries of the CRL served, or 0
  curl -s -m 20 -o "$work/crl.der" "$1/crl/cluster.crl" || { echo 0; return; }
  python3 - "$work/crl.der" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
def tl(i):
    t = d[i]; l = d[i + 1]; i += 2
    if l & 0x80:
        k = l & 0x7F; l = int.from_bytes(d[i:i + k], "big"); i += k
    return t, l, i
try:
    _, _, i = tl(0)          # CertificateList
    _, tbs_len, i = tl(i)    # tbsCertList
    end, seen_time, n = i + tbs_len, False, 0
    while i < end:
        t, l, j = tl(i)
        if t in (0x17, 0x18):
            seen_time = True
        elif t == 0x30 and seen_time:  # revokedCertificates: count its entries
            p = j
            while p < j + l:
                _, l2, p2 = tl(p); p = p2 + l2; n += 1
            break
        i = j + l
    print(n)
except Exception:
    print(0)
PY
}
declare -A complete_s crl_s
replicas=(A1 B1)
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  pending=0
  for r in "${replicas[@]}"; do
    url_var="REPLICA_${r}_URL"; url="${!url_var}"
    if [ -z "${complete_s[$r]:-}" ]; then
      c="$(view_count "$url")"
      if [ -n "$c" ] && python3 -c "import sys; sys.exit(0 if float('$c') >= $base + $N else 1)" && sample_revoked "$url"; then
        complete_s[$r]="$(python3 -c "print(f'{$(now) - $t_ack:.2f}')")"
        log "replica ${r,,} complete after ${complete_s[$r]}s"
      else
        pending=1
      fi
    fi
    if [ -z "${crl_s[$r]:-}" ]; then
      n="$(crl_count "$url")"
      if ((n >= REVOKED + N)); then
        crl_s[$r]="$(python3 -c "print(f'{$(now) - $t_ack:.2f}')")"
        log "replica ${r,,} serves a CRL of $n entries after ${crl_s[$r]}s"
      else
        pending=1
      fi
    fi
  done
  if [ -n "${complete_s[A1]:-}" ] && [ -n "${complete_s[B1]:-}" ] && [ -z "${stopped:-}" ]; then
    kill -INT "$wrk_pid" 2>/dev/null || true
    stopped=1
  fi
  ((pending == 0)) && break
  if (($(date +%s) > deadline)); then log "gave up after ${TIMEOUT}s"; break; fi
  sleep 0.5
done
[ -n "${stopped:-}" ] || kill -INT "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" || true
text_count="$(openssl crl -inform DER -in "$work/crl.der" -noout -text 2>/dev/null | grep -c 'Serial Number:' || true)"
before="$(wrk_json "$work/wrk-before.out")"
during="$(wrk_json "$work/wrk-during.out")"
python3 - "$N" "$write_s" "$rss_kb" "$before" "$during" "${complete_s[A1]:-none}" "${complete_s[B1]:-none}" \
  "${crl_s[A1]:-none}" "${crl_s[B1]:-none}" "$text_count" "$((REVOKED + N))" <<'PY'
import json, sys
n, write_s, rss, before, during, ca, cb, la, lb, text_count, want = sys.argv[1:]
b, d = json.loads(before), json.loads(during)
print(f"| measure | result | target |")
print(f"| --- | --- | --- |")
print(f"| {int(n):,} revocations written (vigil import, 2 regions) | {write_s} s, peak RSS {int(rss)/1024:.0f} MiB | ≤ 10 s |")
print(f"| replica a1 / b1 complete after the last acknowledgement | {ca} s / {cb} s | ≤ 15 s |")
print(f"| CRL served by a1 / b1 lists all {int(want):,} after the last acknowledgement | {la} s / {lb} s | |")
print(f"| last CRL fetched, entries by `openssl crl -text` | {text_count} | {int(want):,} |")
print(f"| cached OCSP p99 before / during | {b['p99_us']/1000:.2f} ms / {d['p99_us']/1000:.2f} ms ({d['p99_us']/max(b['p99_us'],1):.2f}x) | ≤ 3x |")
print(f"| cached OCSP req/s before / during | {b['rps']:.0f} / {d['rps']:.0f} | |")
print(f"| wrk errors before / during | {sum(b['errors'].values())} / {sum(d['errors'].values())} | 0 |")
PY
