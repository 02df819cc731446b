#!/usr/bin/env bash
# Backup, archive and restore timings: N certificates (10 % revoked) in two regions on
# loopback redis-server while `vigil archive` runs; a backup (plain and age-encrypted) and its
# verify; N/100 more revocations; both regions flushed and restored from the backup
# (`backup restore`), flushed again and rebuilt from the backup plus the archive (point in
# time); then `vigil drill restore` into a third Redis. Each step prints its time, the peak RSS
# of the vigil process (/usr/bin/time) and the 1-minute load average when it ended.
#
#   N=1000000 VIGIL_BIN=target/release/vigil bash loadtest/backup-bench.sh
#   N=10000000 SEED=direct VIGIL_BIN=target/release/vigil bash loadtest/backup-bench.sh
#
# QUICK=1 stops after the plain restore (no point-in-time restore, no drill).
# SEED=import (the default) writes the certificates with `vigil import`; SEED=direct writes the
# regions' snapshots with loadtest/seed-snapshot.py through `redis-cli --pipe` (no stream
# entries, so the archive holds only the later revocations), after checking that the seeder
# and `vigil import` give the same records and digest for the first 1000 certificates.
#
# Needs redis-server, redis-cli, curl, python3, bc, /usr/bin/time and age-keygen (Debian: age).
set -euo pipefail
N="${N:-100000}"
SEED="${SEED:-import}"
V="$(realpath "${VIGIL_BIN:-target/release/vigil}")"
SEEDER="$(realpath "$(dirname "$0")/seed-snapshot.py")"
BASE="${PORT_BASE:-16500}"
R="$(mktemp -d /tmp/vigil-backup-bench.XXXXXX)"
pa=$BASE pb=$((BASE + 1)) ps=$((BASE + 2)) pm=$((BASE + 9))
cleanup() {
  [ -f "$R/archive.pid" ] && kill "$(cat "$R/archive.pid")" 2>/dev/null || true
  for p in $pa $pb $ps; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$R"
}
trap cleanup EXIT
cd "$R"
export VIGIL_LOG=warn
VIGIL_DATA_DIR="$R/pki" "$V" check-config >/dev/null
for p in $pa $pb $ps; do
  mkdir -p "r$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "r$p" --daemonize yes >/dev/null
done
for p in $pa $pb $ps; do until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done; done
cat > vigil.toml <<T
data_dir = "$R/replica"
[status]
origin = "bench"
[feed]
quorum = 2
[[region]]
name = "a"
redis = "redis://127.0.0.1:$pa/"
[[region]]
name = "b"
redis = "redis://127.0.0.1:$pb/"
[[issuer]]
name = "demo"
certificate = "$R/pki/ca.pem"
responder_certificate = "$R/pki/responder.pem"
responder_key = "$R/pki/responder.key"
crl_key = "$R/pki/ca.key"
T
python3 - "$N" "$SEED" <<'P'
import sys
n, seed = int(sys.argv[1]), sys.argv[2]
with open("index.txt", "w") as f:
    for i in range(1, (n if seed == "import" else min(n, 1000)) + 1):
        if i % 10 == 0:
            f.write(f"R\t300101000000Z\t250101000000Z,keyCompromise\t{i:08X}\tunknown\t/CN=c{i}\n")
        else:
            f.write(f"V\t300101000000Z\t\t{i:08X}\tunknown\t/CN=c{i}\n")
with open("later.txt", "w") as f:
    for i in range(1, n // 100 + 1):
        f.write(f"R\t300101000000Z\t260101000000Z,superseded\t{i * 7 + 1:08X}\tunknown\t/CN=c\n")
P
age-keygen -o backup.key 2>/dev/null
recipient=$(grep -o 'age1[0-9a-z]*' backup.key | head -1)
load() { cut -d' ' -f1 /proc/loadavg; }
timed() {
  local what=$1; shift; local t s
  t=$(date +%s.%N)
  /usr/bin/time -f %M -o "$R/rss" "$@" >"$R/last.out"
  s=$(echo "$(date +%s.%N) - $t" | bc)
  printf '%-46s %8.2f s  peak RSS %6d MB  load %s\n' "$what" "$s" "$(($(tail -1 "$R/rss") / 1024))" "$(load)"
}
issuer() { redis-cli -p "$1" smembers vigil:issuers | head -1; }
digest() { redis-cli -p "$1" hget vigil:digest "$(issuer "$1")"; }
count() { redis-cli -p "$1" hlen "vigil:snap:$(issuer "$1")"; }
"$V" --config vigil.toml archive --dir "$R/arch" --metrics-addr "127.0.0.1:$pm" >archive.out 2>&1 &
echo $! >archive.pid
echo "N = $N certificates, 10 % revoked, two regions, seeded by $SEED; $V; load $(load) at the start"
if [ "$SEED" = import ]; then
  timed "import" "$V" --config vigil.toml import --issuer demo --openssl-index index.txt
else
  # The seeder against `vigil import`: the first 1000 certificates imported, the same seeded
  # into the scratch Redis; the snapshots and digests must be identical.
  "$V" --config vigil.toml import --issuer demo --openssl-index index.txt >/dev/null
  ih=$(issuer "$pa")
  python3 "$SEEDER" "$(wc -l <index.txt)" "$ih" | redis-cli -p "$ps" --pipe >/dev/null
  for p in $pa $ps; do redis-cli -p "$p" --no-raw hgetall "vigil:snap:$ih" | sed "s/^ *[0-9]*) //" | paste - - | sort >"snap.$p"; done
  if ! cmp -s "snap.$pa" "snap.$ps" || [ "$(digest "$pa")" != "$(digest "$ps")" ]; then
    echo "the seeder and vigil import disagree: digests $(digest "$pa") / $(digest "$ps")" >&2
    diff "snap.$pa" "snap.$ps" | head -5 >&2
    exit 1
  fi
  redis-cli -p "$ps" flushall >/dev/null
  t=$(date +%s.%N)
  seeders=()
  for p in $pa $pb; do python3 "$SEEDER" "$N" "$ih" | redis-cli -p "$p" --pipe >/dev/null & seeders+=($!); done
  wait "${seeders[@]}"
  printf '%-46s %8.2f s  load %s\n' "seed (seed-snapshot.py | redis-cli --pipe)" "$(echo "$(date +%s.%N) - $t" | bc)" "$(load)"
fi
for p in $pa $pb; do echo "region on $p: $(count "$p") records, digest $(digest "$p")"; done
seeded=$(digest "$pa")
"$V" --config vigil.toml crl publish >/dev/null
timed "backup create" "$V" --config vigil.toml backup create --out b.vbk
timed "backup verify" "$V" backup verify b.vbk
timed "backup create --recipient (age)" "$V" --config vigil.toml backup create --out b.vbk.age --recipient "$recipient"
timed "backup verify --identity (age)" "$V" backup verify b.vbk.age --identity backup.key
ls -l b.vbk b.vbk.age | awk '{print "size " $9 ": " $5 " bytes"}'
timed "$((N / 100)) revocations after the backup" "$V" --config vigil.toml import --issuer demo --openssl-index later.txt
# wait (bounded) until the archive has caught up with both regions
for _ in $(seq 1 600); do
  lag=$(curl -s "127.0.0.1:$pm/metrics" | awk '/^vigil_archive_lag_seconds/ {if ($2 > m) m = $2} END {print m + 0}')
  [ "$(echo "$lag < 1" | bc)" = 1 ] && break
  sleep 0.5
done
echo "archive lag after the revocations: ${lag} s (max over regions)"
until=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
kill "$(cat archive.pid)"; rm archive.pid; sleep 0.5
timed "archive verify" "$V" archive verify arch
tail -1 last.out
echo "archive size: $(du -sb arch | cut -f1) bytes"
redis-cli -p $pa flushall >/dev/null; redis-cli -p $pb flushall >/dev/null
timed "restore (both flushed regions)" "$V" --config vigil.toml backup restore b.vbk
grep -E "issuer|CRL" last.out || true
for p in $pa $pb; do
  echo "region on $p: $(count "$p") records, digest $(digest "$p") ($( [ "$(digest "$p")" = "$seeded" ] && echo "the backup's" || echo "NOT the backup's"))"
done
[ -n "${QUICK:-}" ] && exit 0
redis-cli -p $pa flushall >/dev/null; redis-cli -p $pb flushall >/dev/null
timed "restore --archive --until (both flushed regions)" "$V" --config vigil.toml backup restore b.vbk --archive arch --until "$until"
grep "state as of" last.out
for p in $pa $pb; do echo "region on $p: $(count "$p") records"; done
timed "drill restore" "$V" --config vigil.toml drill restore --backup b.vbk --scratch-redis "redis://127.0.0.1:$ps/"
grep -E "^timings|^PASS|^FAIL" last.out
