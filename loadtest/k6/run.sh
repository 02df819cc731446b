#!/usr/bin/env bash
# Starts vigil on a free loopback port with the loadtest demo PKI, runs one k6 scenario
# against it, and stops vigil.
#
#   loadtest/k6/run.sh mix      # steady good/revoked/unissued mix over GET and POST
#   loadtest/k6/run.sh nonce    # fresh nonces, vigil with VIGIL_NONCE=echo
#
# RATE, DURATION and P99_MS pass through to the scenario; the k6 summary is also written to
# loadtest/out/k6-<scenario>.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

scenario="${1:-mix}"
case "$scenario" in
mix) nonce=ignore ;;
nonce) nonce=echo ;;
*) die "unknown scenario '$scenario' (mix or nonce)" ;;
esac
need k6 openssl
need_vigil
[[ -s "$OUT_DIR/corpus/index.txt" ]] || "$LOADTEST_DIR/gen-corpus.sh"

log_file="$(mktemp /tmp/vigil-k6.XXXXXX)"
VIGIL_NONCE="$nonce" VIGIL_LISTEN=127.0.0.1:0 VIGIL_LOG=warn VIGIL_DATA_DIR="$OUT_DIR/vigil-data" \
	"$VIGIL" serve >"$log_file" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log_file"' EXIT
addr="$(wait_for_listen "$log_file" "$pid")"
log "vigil (nonce $nonce) on http://$addr/"

k6 run --quiet --no-usage-report \
	-e VIGIL_URL="http://$addr" -e CORPUS_DIR="$OUT_DIR/corpus" \
	${RATE:+-e RATE="$RATE"} ${DURATION:+-e DURATION="$DURATION"} ${P99_MS:+-e P99_MS="$P99_MS"} \
	--summary-export "$OUT_DIR/k6-$scenario.json" \
	"$LOADTEST_DIR/k6/$scenario.js"
