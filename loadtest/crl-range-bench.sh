#!/usr/bin/env bash
# The CRL of 1,000,000 entries served with Range: vigil against nginx serving the same file,
# in one run, on the same CPUs. Reports, per workload, req/s and MB/s of each server and
# vigil's ratio to nginx (the target of issue 13: at least 0.8x):
#
#   range   GET with `Range: bytes=a-b` for uniformly random 64 KiB slices (206), as a fetcher
#           resuming downloads asks, CONNS_RANGE connections
#   full    GET of the whole CRL (200), CONNS_FULL connections
#
#   cargo build --release && loadtest/crl-range-bench.sh
#
# Steps: the demo PKI (vigil check-config), CRL_N revoked certificates written to the local
# journal with `vigil import --openssl-index`, one complete CRL built and signed with
# `vigil crl publish`; vigil serves it from memory, nginx (sendfile) the very file vigil
# serves, fetched from vigil. Before measuring, both answer the same random ranges with the
# same bytes (compared with the file) and 416 past the end.
#
# Environment: CRL_N (1000000), SLICE_BYTES (65536), CONNS_RANGE (16), CONNS_FULL (4),
# SECS (10, at most 10), ROUNDS (2: vigil and nginx alternate, best round kept),
# SERVER_CPUS (0), WRK_CPUS (1), KEEP_WORK (unset: the work directory is removed).
set -euo pipefail
# shellcheck source=loadtest/lib.sh
. "$(dirname "$0")/lib.sh"

N="${CRL_N:-1000000}"
SLICE="${SLICE_BYTES:-65536}"
CONNS_RANGE="${CONNS_RANGE:-16}"
CONNS_FULL="${CONNS_FULL:-4}"
SECS="${SECS:-10}"
ROUNDS="${ROUNDS:-2}"
SERVER_CPUS="${SERVER_CPUS:-0}"
WRK_CPUS="${WRK_CPUS:-1}"
((SECS <= 10)) || die "SECS is at most 10"

need wrk nginx curl python3 taskset cmp
need_vigil
export WRK_LUA_DIR="$LOADTEST_DIR/wrk"

WORK="$(mktemp -d /tmp/vigil-crl-range.XXXXXX)"
chmod 755 "$WORK" # nginx workers run as nobody
SERVER_PIDS=()
cleanup() {
	local p c
	for p in "${SERVER_PIDS[@]}"; do
		for c in $(pgrep -P "$p" || true); do kill -TERM "$c" 2>/dev/null || true; done
		kill -TERM "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	[[ -n "${KEEP_WORK:-}" ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the CRL --------------------------------------------------------------------------------

PKI="$WORK/pki"
VIGIL_LOG=warn VIGIL_DATA_DIR="$PKI" "$VIGIL" check-config >/dev/null
VPORT="$(free_port)"
VBASE="http://127.0.0.1:$VPORT"
cat >"$WORK/vigil.toml" <<EOF
data_dir = "$WORK/node"
[server]
listen = "127.0.0.1:$VPORT"
[status]
journal = "$WORK/journal.vj"
[crl]
base_url = "$VBASE"
[[issuer]]
name = "demo"
certificate = "$PKI/ca.pem"
responder_certificate = "$PKI/responder.pem"
responder_key = "$PKI/responder.key"
crl_key = "$PKI/ca.key"
EOF
vig() { VIGIL_LOG=warn "$VIGIL" --config "$WORK/vigil.toml" "$@"; }

log "importing $N revoked certificates"
python3 - "$N" "$WORK/index.txt" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write("R\t300101000000Z\t250101000000Z,keyCompromise\t%X\tunknown\t/CN=c%d\n" % (0x10000000 + i, i))
PY
t0=$(date +%s.%N)
vig import --openssl-index "$WORK/index.txt" --issuer demo >"$WORK/import.out"
t1=$(date +%s.%N)
vig crl publish >"$WORK/publish.out"
t2=$(date +%s.%N)
log "import $(python3 -c "print(f'{$t1-$t0:.1f}')") s, publish $(python3 -c "print(f'{$t2-$t1:.1f}')") s: $(cat "$WORK/publish.out")"

# --- servers --------------------------------------------------------------------------------

taskset -c "$SERVER_CPUS" env VIGIL_LOG=warn "$VIGIL" --config "$WORK/vigil.toml" serve >"$WORK/vigil.log" 2>&1 &
SERVER_PIDS+=($!)
wait_for_port "$VPORT"
CRL_PATH=/crl/demo.crl
curl -fsS -o "$WORK/demo.crl" "$VBASE$CRL_PATH" || die "vigil serves no CRL; see $WORK/vigil.log"
SIZE="$(stat -c %s "$WORK/demo.crl")"
ENTRIES="$(sed -n 's/.*, \([0-9]*\) entries.*/\1/p' "$WORK/publish.out" | head -n1)"
log "the CRL: $SIZE bytes, $ENTRIES entries"

NPORT="$(free_port)"
NBASE="http://127.0.0.1:$NPORT"
mkdir -p "$WORK/nginx/www/crl" "$WORK/nginx/tmp"
cp "$WORK/demo.crl" "$WORK/nginx/www/crl/demo.crl"
chmod -R a+rX "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes $(taskset -c "$SERVER_CPUS" nproc);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    default_type application/pkix-crl;
    server {
        listen 127.0.0.1:$NPORT;
        root $WORK/nginx/www;
    }
}
EOF
taskset -c "$SERVER_CPUS" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
	>"$WORK/nginx/stdout.log" 2>&1 &
SERVER_PIDS+=($!)
wait_for_port "$NPORT"

# --- the same bytes from both ---------------------------------------------------------------

for base in "$VBASE" "$NBASE"; do
	for first in 0 $((SIZE / 3)) $((SIZE - SLICE)); do
		last=$((first + SLICE - 1))
		code="$(curl -s -o "$WORK/slice" -w '%{http_code}' -H "Range: bytes=$first-$last" "$base$CRL_PATH")"
		[[ "$code" == 206 ]] || die "$base: Range $first-$last: HTTP $code"
		cmp -s "$WORK/slice" <(tail -c +$((first + 1)) "$WORK/demo.crl" | head -c "$SLICE") ||
			die "$base: Range $first-$last: other bytes than the file"
	done
	code="$(curl -s -o /dev/null -w '%{http_code}' -H "Range: bytes=$SIZE-" "$base$CRL_PATH")"
	[[ "$code" == 416 ]] || die "$base: a Range past the end: HTTP $code, not 416"
	curl -fsS -o "$WORK/whole" "$base$CRL_PATH"
	cmp -s "$WORK/whole" "$WORK/demo.crl" || die "$base: the whole CRL differs"
done
log "vigil and nginx answer the same ranges with the same bytes, and 416 past the end"

# --- measurements ---------------------------------------------------------------------------

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
run() { # run WORKLOAD SERVER BASE
	local workload="$1" server="$2" base="$3" out="$WORK/wrk-$1-$2.out" conns script
	if [[ "$workload" == range ]]; then
		conns="$CONNS_RANGE" script="$LOADTEST_DIR/wrk/range.lua"
	else
		conns="$CONNS_FULL" script="$LOADTEST_DIR/wrk/fixed.lua"
	fi
	SIZE_BYTES="$SIZE" SLICE_BYTES="$SLICE" taskset -c "$WRK_CPUS" \
		wrk -t1 -c"$conns" -d"${SECS}s" --timeout 10s -s "$script" "$base$CRL_PATH" >"$out" 2>&1 ||
		die "wrk: $(cat "$out")"
	printf '%s\t%s\t%s\n' "$workload" "$server" "$(sed -n 's/^WRKJSON //p' "$out")" >>"$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
	log "round $round of $ROUNDS: ${SECS}s per run"
	for workload in range full; do
		run "$workload" vigil "$VBASE"
		run "$workload" nginx "$NBASE"
	done
done

python3 - "$RESULTS" "$SIZE" "$SLICE" "$ENTRIES" <<'PY'
import json, sys
path, size, slice_, entries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
best = {}
for line in open(path):
    workload, server, j = line.rstrip("\n").split("\t", 2)
    r = json.loads(j)
    errs = sum(r["errors"].values())
    per = r["bytes"] / max(r["requests"], 1)
    want = slice_ if workload == "range" else size
    if errs or not (want <= per < want * 1.05 + 2048):
        sys.exit(f"{workload}/{server}: {errs} errors, {per:.0f} bytes per response (expected about {want})")
    key = (workload, server)
    if key not in best or r["rps"] > best[key]["rps"]:
        best[key] = r
print(f"CRL: {size} bytes ({entries} entries); best of the rounds\n")
print("| workload | server | req/s | MB/s | p50 ms | p99 ms | vigil / nginx |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for workload, label in (("range", f"Range, random {slice_ // 1024} KiB slices"), ("full", "full download")):
    v, n = best[(workload, "vigil")], best[(workload, "nginx")]
    for server, r in (("vigil", v), ("nginx", n)):
        mbs = r["bytes"] / (r["duration_us"] / 1e6) / 1e6
        ratio = f"{v['rps'] / n['rps']:.2f}x" if server == "vigil" else ""
        print(f"| {label} | {server} | {r['rps']:.0f} | {mbs:.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {ratio} |")
PY
