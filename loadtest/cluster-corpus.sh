#!/usr/bin/env bash
# Request corpus for the cluster scenarios, made from the cluster's PKI with `openssl ocsp
# -reqout` (nothing opaque is checked in): N good, revoked and unissued serials, as JSON
# [{kind, serial, b64}] in $STATE/corpus.json and as DER files in $STATE/corpus/.
#   loadtest/cluster-corpus.sh [N]     (default 50 of each kind)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STATE="${VIGIL_CLUSTER_DIR:-$here/out/cluster}"
# shellcheck disable=SC1091
. "$STATE/cluster.env"
n="${1:-50}"
mkdir -p "$STATE/corpus"
out="$STATE/corpus.json"
first=1
echo "[" >"$out"
emit() { # emit KIND SERIAL_HEX
  local f="$STATE/corpus/$1-$2.der"
  openssl ocsp -issuer "$STATE/pki/ca.pem" -serial "0x$2" -no_nonce -reqout "$f" >/dev/null
  [ $first = 1 ] || echo "," >>"$out"
  first=0
  printf '{"kind":"%s","serial":"%s","b64":"%s"}' "$1" "$2" "$(base64 -w0 "$f")" >>"$out"
}
for ((i = 0; i < n && i < GOOD; i++)); do emit good "$(printf '%X' $((0x1000 + i)))"; done
for ((i = 0; i < n && i < REVOKED; i++)); do emit revoked "$(printf '%X' $((0x2000 + i)))"; done
for ((i = 0; i < n; i++)); do emit unissued "$(printf '%X' $((0x9000 + i)))"; done
echo "]" >>"$out"
echo "$out"
