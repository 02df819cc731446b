#!/usr/bin/env bash
# Peak-rate runner: in one run, on the same certificates, wrk against
#   - a bare hyper server returning vigil's response bytes (the HTTP ceiling of this stack),
#   - nginx serving the same bytes as a static file,
#   - vigil on its cached path (GET and POST of one fixed request; GET of the whole corpus),
#   - `openssl ocsp -index ... -port` (signs every request),
#   - vigil with VIGIL_NONCE=echo and `openssl ocsp`, each POSTed a fresh nonce per request,
#   - vigil again, paced to about half of its GET peak, for latency.
# Prints a table and writes it as markdown and JSON to loadtest/out/peak-<time>-<layout>.{md,json}
# (and peak-latest-<layout>.{md,json}).
#
#   cargo build --release && cargo build --release --example bare_hyper
#   loadtest/peak.sh                  # LAYOUT=shared
#   LAYOUT=split loadtest/peak.sh
#
# Everything runs in a private network namespace with only loopback up (`unshare -n`): OpenSSL
# 3.0's `ocsp -port` binds every interface, and no port of the host is used.
#
# Settings (environment):
#   LAYOUT=shared  how servers and wrk share the CPUs, the same for every peer:
#                  shared: servers and wrk may all use every CPU (wrk: one thread per CPU);
#                  split:  servers on CPU 0, wrk (one thread) on CPU 1.
#                  Servers size themselves to the CPUs they get: tokio one worker per CPU,
#                  nginx one worker process per CPU; `openssl ocsp` is one process (its
#                  default), and with more than one server CPU it is also measured with
#                  `-multi <CPUs>` for reference.
#   SERVER_CPUS, CLIENT_CPUS, WRK_THREADS   override the layout (taskset CPU lists)
#   DURATION=5     seconds per measured wrk run (at most 10)
#   WARMUP=1       seconds of discarded wrk load before each measured run (not for openssl,
#                  which is restarted fresh for every run instead)
#   CONNS=32       wrk connections for the peak runs
#   ROUNDS=3       every peer is measured once per round; the report shows the median round
#                  (the machine may be shared: rounds spread out slow moments)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-3}"
ROUND=0
LAYOUT="${LAYOUT:-shared}"
case "$LAYOUT" in
shared)
	all="0-$(($(nproc) - 1))"
	SERVER_CPUS="${SERVER_CPUS:-$all}"
	CLIENT_CPUS="${CLIENT_CPUS:-$all}"
	WRK_THREADS="${WRK_THREADS:-$(nproc)}"
	;;
split)
	SERVER_CPUS="${SERVER_CPUS:-0}"
	CLIENT_CPUS="${CLIENT_CPUS:-1}"
	WRK_THREADS="${WRK_THREADS:-1}"
	;;
*) die "LAYOUT must be shared or split" ;;
esac
((DURATION >= 1 && DURATION <= 10)) || die "DURATION must be 1..10 seconds"

if [[ -z "${PEAK_IN_NETNS:-}" ]]; then
	need unshare ip
	if [[ "$(id -u)" == 0 ]]; then ns=(-n); else ns=(-r -n); fi
	exec unshare "${ns[@]}" -- env PEAK_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up

need wrk openssl nginx taskset curl python3
need_vigil
[[ -x "$BARE_HYPER" ]] || die "no $BARE_HYPER: run 'cargo build --release --example bare_hyper'"
[[ -s "$OUT_DIR/corpus/index.txt" ]] || "$LOADTEST_DIR/gen-corpus.sh"

DATA="$OUT_DIR/vigil-data"
CORPUS="$OUT_DIR/corpus"
CA="$DATA/ca.pem"
GOOD1_PEM="$DATA/certs/good-1.pem"
REQ="$CORPUS/good-1.sha1.der"
NONCE_REQ="$CORPUS/good-1.sha1.nonce.der"
GET_PATH="/$(base64 -w0 "$REQ" | b64_to_path)"
MIX=("$CORPUS"/good-sha1.b64 "$CORPUS"/good-sha256.b64 "$CORPUS"/revoked-sha1.b64
	"$CORPUS"/revoked-sha256.b64 "$CORPUS"/unissued-sha1.b64 "$CORPUS"/unissued-sha256.b64)
export WRK_LUA_DIR="$LOADTEST_DIR/wrk"

WORK="$(mktemp -d /tmp/vigil-peak.XXXXXX)"
chmod 755 "$WORK" # nginx workers run as nobody
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
SERVER_PID=""

stop_server() { # the server and its child processes (nginx workers, openssl -multi)
	local pid="${SERVER_PID:-}" children
	SERVER_PID=""
	[[ -n "$pid" ]] || return 0
	children="$(pgrep -P "$pid" || true)"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for c in $children; do
		kill -KILL "$c" 2>/dev/null || true
	done
}
cleanup() {
	stop_server
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- servers -------------------------------------------------------------------------------

# Each start removes the previous log first: the redirection happens in the child, so an old
# "listening" line could otherwise be read before the new server truncates the file.
start_vigil() { # nonce policy; sets SERVER_PID and ADDR
	rm -f "$WORK/vigil.log"
	VIGIL_LOG=warn VIGIL_DATA_DIR="$DATA" VIGIL_LISTEN=127.0.0.1:0 VIGIL_NONCE="$1" \
		taskset -c "$SERVER_CPUS" "$VIGIL" serve >"$WORK/vigil.log" 2>&1 &
	SERVER_PID=$!
	ADDR="$(wait_for_listen "$WORK/vigil.log" "$SERVER_PID")"
}

start_bare_hyper() {
	rm -f "$WORK/bare.log"
	taskset -c "$SERVER_CPUS" "$BARE_HYPER" "$WORK/response.der" 127.0.0.1:0 >"$WORK/bare.log" 2>&1 &
	SERVER_PID=$!
	ADDR="$(wait_for_listen "$WORK/bare.log" "$SERVER_PID")"
}

start_nginx() {
	local port n
	port="$(free_port)"
	n="$(taskset -c "$SERVER_CPUS" nproc)"
	mkdir -p "$WORK/nginx/www" "$WORK/nginx/tmp"
	cp "$WORK/response.der" "$WORK/nginx/www/response.der"
	chmod -R a+rX "$WORK/nginx"
	cat >"$WORK/nginx/nginx.conf" <<-EOF
		daemon off;
		worker_processes $n;
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
		    default_type application/ocsp-response;
		    server {
		        listen 127.0.0.1:$port;
		        root $WORK/nginx/www;
		        location / { try_files /response.der =404; }
		    }
		}
	EOF
	taskset -c "$SERVER_CPUS" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
		>"$WORK/nginx/stdout.log" 2>&1 &
	SERVER_PID=$!
	wait_for_port "$port"
	ADDR="127.0.0.1:$port"
}

# openssl ocsp busy-loops after a connection that closes before sending a request, so it is
# started fresh for every run and its readiness is read from its log, never probed.
# Args: extra options (-multi N).
start_openssl() {
	local port
	port="$(free_port)"
	rm -f "$WORK/openssl.log"
	taskset -c "$SERVER_CPUS" openssl ocsp -index "$CORPUS/index.txt" -port "$port" \
		-rsigner "$DATA/responder.pem" -rkey "$DATA/responder.key" -CA "$CA" \
		-ndays 4 -resp_key_id "$@" >"$WORK/openssl.log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 1 200); do
		grep -q 'waiting for OCSP client connections' "$WORK/openssl.log" 2>/dev/null && break
		kill -0 "$SERVER_PID" 2>/dev/null || die "openssl ocsp exited: $(cat "$WORK/openssl.log")"
		sleep 0.05
	done
	ADDR="127.0.0.1:$port"
}

# --- checks and measurements ---------------------------------------------------------------

# Fetches good-1's response from $ADDR (GET) and checks it: 200, the OCSP content type, a
# body that verifies against the demo CA and says good. Writes it to $1 when given.
check_ocsp() {
	local what="$1" out="${2:-$WORK/check.der}" code ctype
	read -r code ctype < <(curl -s -o "$out" -w '%{http_code} %{content_type}\n' "http://$ADDR$GET_PATH")
	[[ "$code" == 200 ]] || die "$what: HTTP $code"
	[[ "${ctype,,}" == application/ocsp-response* ]] || die "$what: content type '$ctype'"
	[[ -s "$out" ]] || die "$what: empty body"
	openssl ocsp -respin "$out" -issuer "$CA" -cert "$GOOD1_PEM" -CAfile "$CA" >"$WORK/check.txt" 2>&1 ||
		die "$what: $(cat "$WORK/check.txt")"
	grep -q 'Response verify OK' "$WORK/check.txt" && grep -q ': good' "$WORK/check.txt" ||
		die "$what: response does not verify as good: $(cat "$WORK/check.txt")"
}

# CPU time (clock ticks, user + system) used so far by process $1 and its children (nginx
# workers).
CLK_TCK="$(getconf CLK_TCK)"
tree_ticks() {
	local total=0 p t
	for p in "$1" $(pgrep -P "$1" || true); do
		# Fields after "pid (comm) ": utime and stime are the 12th and 13th.
		t="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f12,13)" || continue
		[[ -n "$t" ]] && total=$((total + ${t% *} + ${t#* }))
	done
	printf '%s\n' "$total"
}

# wrk against $ADDR. Args: label script path conns seconds [VAR=value...]. Records the result,
# with the CPU seconds the server and wrk used during the run, unless the label is "-"
# (warm-up).
run_wrk() {
	local label="$1" script="$2" path="$3" conns="$4" secs="$5"
	shift 5
	local before after
	before="$(tree_ticks "$SERVER_PID")"
	/usr/bin/time -f '%U %S' -o "$WORK/wrk.time" env "$@" taskset -c "$CLIENT_CPUS" \
		wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" -s "$WRK_LUA_DIR/$script" "http://$ADDR$path" \
		>"$WORK/wrk.out" 2>&1 || die "wrk failed: $(cat "$WORK/wrk.out")"
	after="$(tree_ticks "$SERVER_PID")"
	local json server_cpu client_cpu
	json="$(sed -n 's/^WRKJSON //p' "$WORK/wrk.out")"
	[[ -n "$json" ]] || die "no result from wrk: $(cat "$WORK/wrk.out")"
	server_cpu="$(python3 -c "print(round(($after - $before) / $CLK_TCK, 2))")"
	client_cpu="$(awk '{ print $1 + $2 }' "$WORK/wrk.time")"
	if [[ "$label" != "-" ]]; then
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$ROUND" "$conns" "$server_cpu" "$client_cpu" "$json" >>"$RESULTS"
		python3 "$LOADTEST_DIR/report.py" --line "$label" "$json" "$server_cpu" "$client_cpu" >&2
	fi
	printf '%s\n' "$json"
}

measure() { # label script path [VAR=value...]: warm-up, then the measured run
	local label="$1" script="$2" path="$3"
	shift 3
	((WARMUP > 0)) && run_wrk - "$script" "$path" "$CONNS" "$WARMUP" "$@" >/dev/null
	run_wrk "$label" "$script" "$path" "$CONNS" "$DURATION" "$@" >/dev/null
}

rps_of() { # label: its req/s in this round
	python3 -c 'import json,sys
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t", 5)
    if f[0] == sys.argv[2] and f[1] == sys.argv[3]:
        print(json.loads(f[5])["rps"])' "$RESULTS" "$1" "$ROUND"
}

# --- one round: every peer once --------------------------------------------------------------

round_vigil_cached() {
	# Its first answers sign; every corpus answer is signed once before measuring.
	start_vigil ignore
	check_ocsp "vigil" "$WORK/vigil-response.der"
	curl -s -o /dev/null --data-binary @"$REQ" -H 'Content-Type: application/ocsp-request' "http://$ADDR/"
	for f in "${MIX[@]}"; do
		while read -r line; do
			curl -s -o /dev/null "http://$ADDR/$(printf '%s' "$line" | b64_to_path)"
		done <"$f"
	done
	measure vigil-get fixed.lua "$GET_PATH"
	measure vigil-post fixed.lua / WRK_BODY="$REQ"
	measure vigil-get-mix corpus.lua / WRK_CORPUS="${MIX[*]}"

	# Latency at about half of this round's GET peak: wrk waits 1 ms between requests on a
	# connection; a short calibration run gives the rate per connection, from which the
	# connection count follows (adjusted once if the rate is more than 15% off).
	local target cal cal_conns=16 conns ok attempt
	target="$(python3 -c "print($(rps_of vigil-get) / 2)")"
	cal="$(run_wrk - fixed.lua "$GET_PATH" "$cal_conns" 2 WRK_DELAY_MS=1)"
	for attempt in 1 2; do
		conns="$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=int(sys.argv[2]); t=float(sys.argv[3]);
print(max(1, round(t / (r["rps"] / c))))' "$cal" "$cal_conns" "$target")"
		cal="$(run_wrk vigil-get-half fixed.lua "$GET_PATH" "$conns" "$DURATION" WRK_DELAY_MS=1)"
		cal_conns="$conns"
		ok="$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(int(abs(r["rps"] / float(sys.argv[2]) - 1) <= 0.15))' "$cal" "$target")"
		[[ "$ok" == 1 ]] && break
		if ((attempt == 1)); then
			sed -i "/^vigil-get-half\t$ROUND\t/d" "$RESULTS"
			log "  (rate off by more than 15% from $target req/s: adjusting the connection count)"
		fi
	done
	stop_server
}

round_static() {
	# The HTTP ceiling: hyper returning the same bytes.
	start_bare_hyper
	check_ocsp "bare hyper"
	measure bare-get fixed.lua "$GET_PATH"
	measure bare-post fixed.lua / WRK_BODY="$REQ"
	stop_server
	# nginx, the same bytes as a static file.
	start_nginx
	check_ocsp "nginx"
	measure nginx-get fixed.lua "$GET_PATH"
	stop_server
}

round_signing() {
	# openssl ocsp signs every request: a fresh process per run, no warm-up.
	local multi=() m suffix
	start_openssl
	check_ocsp "openssl ocsp"
	stop_server
	for m in "" "$SERVER_NCPU"; do
		if [[ -n "$m" ]]; then
			((m > 1)) || continue # for reference: one openssl process per server CPU
			multi=(-multi "$m")
			suffix=-multi
		else
			multi=()
			suffix=
		fi
		start_openssl "${multi[@]}"
		run_wrk "openssl-get$suffix" fixed.lua "$GET_PATH" "$CONNS" "$DURATION" >/dev/null
		stop_server
		if [[ -z "$suffix" ]]; then
			start_openssl
			run_wrk openssl-post fixed.lua / "$CONNS" "$DURATION" WRK_BODY="$REQ" >/dev/null
			stop_server
		fi
		start_openssl "${multi[@]}"
		run_wrk "openssl-nonce$suffix" nonce.lua / "$CONNS" "$DURATION" WRK_BODY="$NONCE_REQ" >/dev/null
		stop_server
	done
	# vigil signing every request: nonce echo, a fresh nonce per request.
	start_vigil echo
	check_ocsp "vigil (nonce echo)"
	measure vigil-nonce nonce.lua / WRK_BODY="$NONCE_REQ"
	stop_server
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
SERVER_NCPU="$(taskset -c "$SERVER_CPUS" nproc)"
log "peak run, layout $LAYOUT: server CPUs $SERVER_CPUS, wrk CPUs $CLIENT_CPUS x $WRK_THREADS thread(s), $CONNS connections, ${DURATION}s per run (+${WARMUP}s warm-up), $ROUNDS round(s); load average $LOAD_BEFORE"

# The bytes the static peers serve: vigil's response for good-1.
start_vigil ignore
check_ocsp "vigil" "$WORK/response.der"
stop_server

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
	log "round $ROUND of $ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
	round_static
	round_vigil_cached
	round_signing
done

stamp="$(date -u +%Y%m%dT%H%M%SZ)-$LAYOUT"
python3 "$LOADTEST_DIR/report.py" "$RESULTS" "$OUT_DIR/peak-$stamp" \
	--meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
	--meta "command=$(printf '%q ' "$0" "$@")" \
	--meta "settings=LAYOUT=$LAYOUT ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS SERVER_CPUS=$SERVER_CPUS CLIENT_CPUS=$CLIENT_CPUS WRK_THREADS=$WRK_THREADS" \
	--meta "cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1) x $(nproc)" \
	--meta "load_before=$LOAD_BEFORE" \
	--meta "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" \
	--meta "vigil=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_DIR" diff --quiet 2>/dev/null || echo '+dirty')" \
	--meta "tools=$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); $(openssl version | cut -d' ' -f1-2); $(nginx -v 2>&1 | cut -d' ' -f3)"
cp "$OUT_DIR/peak-$stamp.md" "$OUT_DIR/peak-latest-$LAYOUT.md"
cp "$OUT_DIR/peak-$stamp.json" "$OUT_DIR/peak-latest-$LAYOUT.json"
