# Shared helpers for the loadtest scripts (sourced, not run).
# shellcheck shell=bash

LOADTEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$LOADTEST_DIR/.." && pwd)"
OUT_DIR="${OUT_DIR:-$LOADTEST_DIR/out}"
VIGIL="${VIGIL:-$REPO_DIR/target/release/vigil}"
BARE_HYPER="${BARE_HYPER:-$REPO_DIR/target/release/examples/bare_hyper}"

log() { printf '%s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || die "'$c' is required (see loadtest/README.md)"
	done
}

need_vigil() {
	[[ -x "$VIGIL" ]] || die "no vigil binary at $VIGIL: run 'cargo build --release' first (or set VIGIL=)"
}

# vigil with the embedded default rooted at $1 (its data directory).
vigil_in() {
	local data="$1"
	shift
	VIGIL_LOG="${VIGIL_LOG:-warn}" VIGIL_DATA_DIR="$data" "$VIGIL" "$@"
}

# Waits up to 10 s for a line matching "listening on http://ADDR/" in file $1; prints ADDR.
wait_for_listen() {
	local file="$1" pid="$2" addr=""
	for _ in $(seq 1 200); do
		addr="$(sed -n 's|.*listening on http://\([^/]*\)/.*|\1|p' "$file" 2>/dev/null | head -n1)"
		[[ -n "$addr" ]] && break
		kill -0 "$pid" 2>/dev/null || die "server exited early; see $file"
		sleep 0.05
	done
	[[ -n "$addr" ]] || die "server did not report its address; see $file"
	printf '%s\n' "$addr"
}

# Waits up to 10 s until something accepts TCP connections on 127.0.0.1:$1.
wait_for_port() {
	local port="$1"
	for _ in $(seq 1 200); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.05
	done
	die "nothing listens on 127.0.0.1:$port"
}

# A currently free TCP port on loopback.
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Percent-encodes base64 for a GET path (+, / and = escaped, as openssl ocsp does).
b64_to_path() {
	sed -e 's|+|%2B|g' -e 's|/|%2F|g' -e 's|=|%3D|g'
}
