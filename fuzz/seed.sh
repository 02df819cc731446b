#!/usr/bin/env bash
# Builds the seed corpora for every fuzz target from real inputs: requests made by
# `openssl ocsp -reqout` against vigil's demo PKI, and events and journals written by vigil itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

vigil="${VIGIL_BIN:-$root/target/debug/vigil}"
[ -x "$vigil" ] || (cd "$root" && cargo build --quiet)
(cd "$work" && "$vigil" check-config >/dev/null)
d="$work/vigil-data"
# more events: an issuance and revocations with several reasons
(cd "$work" && "$vigil" issue --issuer demo --serial 0x7F01 --not-after 2030-01-01T00:00:00Z >/dev/null)
(cd "$work" && "$vigil" revoke --issuer demo --serial 0x7F02 --reason superseded >/dev/null)

c="$here/corpus"
mkdir -p "$c"/{ocsp_request,get_path,event_decode,journal_load,config_parse,checkpoint_load,crl_parse,backup_parse,archive_segment}

n=0
for digest in -sha1 -sha256 -sha384 -sha512; do
  for nonce in -nonce -no_nonce; do
    for cert in good-1 revoked-1; do
      n=$((n + 1))
      openssl ocsp -issuer "$d/ca.pem" "$digest" -cert "$d/certs/$cert.pem" "$nonce" -reqout "$c/ocsp_request/req-$n.der" >/dev/null 2>&1
    done
  done
done
openssl ocsp -issuer "$d/ca.pem" -cert "$d/certs/good-1.pem" -cert "$d/certs/good-2.pem" -serial 0x1234 \
  -reqout "$c/ocsp_request/multi.der" >/dev/null 2>&1

for f in "$c"/ocsp_request/*.der; do
  b=$(base64 -w0 "$f")
  printf '%s' "$b" > "$c/get_path/$(basename "$f" .der)-std"
  printf '/%s' "${b%%=*}" > "$c/get_path/$(basename "$f" .der)-nopad"
  printf '%s' "$b" | sed 's/+/%2B/g; s,/,%2F,g; s/=/%3D/g' > "$c/get_path/$(basename "$f" .der)-pct"
done

cp "$d/journal.vj" "$c/journal_load/demo.vj"
head -c 100 "$d/journal.vj" > "$c/journal_load/torn.vj"
python3 - "$d/journal.vj" "$c/event_decode" <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()[8:]
i = 0
while i + 8 <= len(data):
    n, _ = struct.unpack('<II', data[i:i + 8])
    event = data[i + 8:i + 8 + n]
    open(f"{sys.argv[2]}/event-{i}", 'wb').write(event)
    if event[1] == 2:
        # hold (3) and release (4) are version 2 and carry reason 0: derive them from a
        # revocation (the demo issuer does not allow holds, so vigil cannot write them here)
        reason_at = 2 + 32 + 1 + event[34] + 8
        for kind in (3, 4):
            e = bytearray(event)
            e[0], e[1], e[reason_at] = 2, kind, 0
            open(f"{sys.argv[2]}/event-{i}-kind{kind}", 'wb').write(bytes(e))
    i += 8 + n
PY

cat > "$c/config_parse/full.toml" <<'TOML'
data_dir = "/var/lib/vigil"
[server]
listen = "0.0.0.0:8080"
ocsp_prefix = "/ocsp"
header_read_timeout = "10s"
[limits]
max_cert_ids = 16
[ocsp]
validity = "4d"
nonce = "echo"
responder_id = "name"
[[issuer]]
name = "ca1"
certificate = "ca.pem"
responder_key = "k.pem"
unissued = "revoked"
TOML
# a CRL as the demo publishes it, and a checkpoint written by a replica-shaped view
(cd "$work" && "$vigil" crl publish >/dev/null 2>&1) || true
find "$d" -name '*.crl' -exec cp {} "$c/crl_parse/" \;
printf 'VIGILCP' > "$c/checkpoint_load/stub"
# a backup of the demo journal as `vigil backup create` writes it, and its first 200 bytes
(cd "$work" && "$vigil" backup create --out "$c/backup_parse/demo.vbk" >/dev/null)
head -c 200 "$c/backup_parse/demo.vbk" > "$c/backup_parse/torn.vbk"
# an archive segment's magic and version, and a header block whose chain the target recomputes
printf 'VIGILARC\x00\x01' > "$c/archive_segment/magic"
{ printf 'VIGILARC\x00\x01\x01\x00\x00\x00\x02{}'; head -c 32 /dev/zero; } > "$c/archive_segment/header"
echo "seed corpora in $c"
